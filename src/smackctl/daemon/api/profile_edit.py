"""The page's profile editor: ``POST /api/profiles/check`` (what ``profile validate`` would
say of a text, the diff against the file, and the switch's plan when it is valid) and ``PUT
/api/profiles/active`` (write the text to the active profile's file, then apply it as a
reload does: its plan first, the switch's rules, the running configuration kept on failure)."""

from __future__ import annotations

import asyncio
import difflib
import os
import tempfile
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from smackctl.daemon.switch import plan_off_loop
from smackctl.errors import UsageError
from smackctl.profile_file import ProfileIssue, validate_profile_file

from .common import errors, json_body, services

__all__ = ["ROUTES"]

#: the largest profile the editor sends (a profile is a few KiB)
MAX_TEXT = 1024 * 1024


def _active_path(request: Request) -> Path:
    path = services(request).scheduler.profile_path
    if path is None:
        raise UsageError(
            "the active profile is the built-in one: there is no file to edit",
            "`smackctl profile new NAME`, then `smackctl profile switch NAME`",
        )
    return path


async def _text(request: Request) -> str:
    text = (await json_body(request)).get("text")
    if not isinstance(text, str):
        raise UsageError("`text` (the profile's YAML) is required", 'send {"text": "models: …"}')
    if len(text) > MAX_TEXT:
        raise UsageError(f"a profile of {len(text)} characters is over {MAX_TEXT}",
                         "a profile is a few KiB: check what was pasted")  # fmt: skip
    return text


def _problem(issue: ProfileIssue) -> dict[str, Any]:
    return {"line": issue.line, "path": issue.key, "message": issue.message, "text": str(issue)}


def _diff(path: Path, text: str) -> str:
    try:
        old = path.read_text()
    except (OSError, ValueError):
        old = ""
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), text.splitlines(keepends=True),
        f"{path.name} (running)", f"{path.name} (edited)",
    )  # fmt: skip
    return "".join(lines)


async def check(request: Request) -> Response:
    path, text = _active_path(request), await _text(request)
    profile, issues = await asyncio.to_thread(validate_profile_file, path, text)
    diff = await asyncio.to_thread(_diff, path, text)
    plan = None
    if profile is not None:
        plan = (await plan_off_loop(services(request).scheduler, profile, path)).as_dict()
    return JSONResponse({"problems": [_problem(i) for i in issues], "diff": diff, "plan": plan})


def _write(path: Path, text: str) -> None:
    """Replace the file in one step (a watcher never reads half of it), keeping its mode."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def save(request: Request) -> Response:
    path, text = _active_path(request), await _text(request)
    profile, issues = await asyncio.to_thread(validate_profile_file, path, text)
    if profile is None:
        return JSONResponse(
            {"ok": False, "problems": [_problem(i) for i in issues],
             "error": {"message": f"the profile has {len(issues)} problem(s); nothing was "
                       "written", "type": "invalid_request_error", "code": "invalid_profile"}},
            status_code=400,
        )  # fmt: skip
    try:
        await asyncio.to_thread(_write, path, text)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}",
                         "check the file's permissions and the disk") from exc  # fmt: skip
    return JSONResponse(await services(request).reloader.reload("asked: the page's editor"))


ROUTES = [
    Route("/api/profiles/check", errors(check), methods=["POST"]),
    Route("/api/profiles/active", errors(save), methods=["PUT"]),
]
