"""The model store against a real local HTTP server: each source keeps its own file, a file
already on disk is checked against the profile's sha256 before a runner loads it, and a
pull fetches again a file that fails the check; stores pulled before the tags keep working."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from smackctl import catalog

from conftest import CHAT, Supervisor, launch_on, shutdown, smackctl


class _Files(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    asked: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        type(self).asked.append(self.path)
        body = type(self).files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def files() -> Iterator[tuple[str, type[_Files]]]:
    """A server of ``handler.files`` (path → bytes) that notes every path asked."""
    handler = type("F", (_Files,), {"files": {}, "asked": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


A, B = b"GGUF model from a" * 1000, b"GGUF model from b" * 1000


def test_two_sources_with_the_same_file_name_keep_a_file_each(files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, handler = files
    handler.files = {"/a/model.gguf": A, "/b/model.gguf": B}
    src_a = catalog.parse_source(f"{url}/a/model.gguf")
    src_b = catalog.parse_source(f"{url}/b/model.gguf")
    path_a = catalog.pull(src_a, tmp_path, _sha(A))
    path_b = catalog.pull(src_b, tmp_path, _sha(B))
    assert path_a != path_b  # b's pull did not overwrite a's file, nor take it as its own
    assert path_a.read_bytes() == A and path_b.read_bytes() == B
    assert path_a.name.startswith("model-") and path_a.suffix == ".gguf"
    assert catalog.pull(src_a, tmp_path, _sha(A)) == path_a  # idempotent
    assert handler.asked == ["/a/model.gguf", "/b/model.gguf"]
    # without a sha256 to go by, each still finds its own
    assert catalog.stored_path(src_b, tmp_path) == path_b


def test_a_store_pulled_under_the_plain_name_keeps_working(files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, handler = files
    handler.files = {"/a/model.gguf": A, "/b/model.gguf": B}
    (tmp_path / "model.gguf").write_bytes(A)  # pulled by an older smackctl, from a
    (tmp_path / "model.gguf.sha256").write_text(f"{_sha(A)}  model.gguf\n")
    src_a = catalog.parse_source(f"{url}/a/model.gguf")
    src_b = catalog.parse_source(f"{url}/b/model.gguf")
    assert catalog.pull(src_a, tmp_path, _sha(A)) == tmp_path / "model.gguf"
    assert catalog.stored_path(src_a, tmp_path, _sha(A)) == tmp_path / "model.gguf"
    assert handler.asked == []  # not fetched again
    # b's sha256 is not the one recorded for the plain file: b gets a file of its own
    assert catalog.stored_path(src_b, tmp_path, _sha(B)) == tmp_path / src_b.stored_name
    path_b = catalog.pull(src_b, tmp_path, _sha(B))
    assert path_b == tmp_path / src_b.stored_name and path_b.read_bytes() == B
    assert (tmp_path / "model.gguf").read_bytes() == A  # a's file is untouched


def test_a_pull_fetches_again_a_file_that_fails_its_sha256(files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, handler = files
    handler.files = {"/a/model.gguf": A}
    src = catalog.parse_source(f"{url}/a/model.gguf")
    own = tmp_path / src.stored_name
    own.write_bytes(b"damaged")  # changed under the store, no record newer than it
    assert catalog.pull(src, tmp_path, _sha(A)) == own
    assert own.read_bytes() == A and handler.asked == ["/a/model.gguf"]
    # a plain-named file that fails: fetched under the source's own name, the other kept
    (tmp_path / "other").mkdir()
    plain = tmp_path / "other" / "model.gguf"
    plain.write_bytes(B)  # no record: it might be a's, until it is hashed
    got = catalog.pull(src, tmp_path / "other", _sha(A))
    assert got == tmp_path / "other" / src.stored_name and got.read_bytes() == A
    assert plain.read_bytes() == B


@pytest.fixture
def served(files, model_dir: Path, tmp_path: Path) -> Iterator[tuple[Supervisor, type[_Files]]]:  # type: ignore[no-untyped-def]
    """A supervisor whose models `one` and `two` come from two sources with one file name
    (tiny-a's and tiny-b's bytes), each with its sha256. The store holds `one`'s file under
    the plain name, as a pull before the tags left it (its record says `one`'s sha256), then
    changed since: tiny-c's bytes are in it now."""
    url, handler = files
    one, two = (model_dir / "tiny-a.gguf").read_bytes(), (model_dir / "tiny-b.gguf").read_bytes()
    handler.files = {"/one/tiny.gguf": one, "/two/tiny.gguf": two}
    models = tmp_path / "home" / "data" / "models"
    models.mkdir(parents=True)
    plain = models / "tiny.gguf"
    plain.write_bytes((model_dir / "tiny-c.gguf").read_bytes())
    record = models / "tiny.gguf.sha256"
    record.write_text(f"{_sha(one)}  tiny.gguf\n")
    at = record.stat().st_mtime
    os.utime(plain, (at + 10, at + 10))  # written after its record
    text = "name: p\nmodels:\n" + "".join(
        f"  {name}:\n    source: {url}/{name}/tiny.gguf\n    sha256: {_sha(data)}\n"
        "    n_ctx: 512\n    threads: 1\n"
        for name, data in (("one", one), ("two", two))
    )
    sup = launch_on(tmp_path, "p", text)
    yield sup, handler
    shutdown(sup)


def _chat(sup: Supervisor, model: str) -> httpx.Response:
    with sup.client() as c:
        return c.post("/v1/chat/completions", json={**CHAT, "model": model})


def test_a_file_on_disk_that_fails_its_sha256_is_refused_until_pulled_again(served) -> None:  # type: ignore[no-untyped-def]
    sup, handler = served
    r = _chat(sup, "one")
    assert r.status_code >= 400, r.text  # tiny-c's bytes are never loaded as `one`
    msg = r.json()["error"]["message"]
    assert "the file of one on disk" in msg and "is not the one the profile names" in msg
    assert "`smackctl models pull one`" in msg
    assert handler.asked == []  # a load does not start a download by itself
    # `two`'s source has the same file name: the plain file is `one`'s, `two` pulls its own
    assert _chat(sup, "two").status_code == 200
    assert handler.asked == ["/two/tiny.gguf"]
    pulled = smackctl(sup.home, "models", "pull", "one")
    assert pulled.returncode == 0, pulled.stderr
    assert handler.asked == ["/two/tiny.gguf", "/one/tiny.gguf"]
    assert _chat(sup, "one").status_code == 200
    files = {m["name"]: Path(m["file"]) for m in sup.status()["models"]}
    assert len({files["one"], files["two"]} | {sup.home.root / "data/models/tiny.gguf"}) == 3
    assert files["one"].read_bytes() == handler.files["/one/tiny.gguf"]
    assert files["two"].read_bytes() == handler.files["/two/tiny.gguf"]
