"""What the supervisor and its llama-cpp-python runner program share: where the runner's key
and log folder come from, the log lines it writes as a request goes, the words of a refused
grammar. The standard library only: the runner program and the supervisor both import it."""

from __future__ import annotations

import hmac
import os
import re

__all__ = [
    "BAD_GRAMMAR",
    "HOST_ANSWERED",
    "HOST_GENERATING",
    "HOST_PROMPT",
    "KEY_ENV",
    "LOGS_ENV",
    "log_path",
    "same_key",
]

#: where the runner's key and its log folder come from (set by the supervisor at spawn)
KEY_ENV = "SMACKCTL_RUNNER_KEY"
LOGS_ENV = "SMACKCTL_RUNNER_LOGS"
#: the only log names an order may give: a file of the log folder, never a path
_LOG_NAME = re.compile(r"runner-[A-Za-z0-9][A-Za-z0-9._-]{0,80}\.log")


def log_path(name: object) -> str:
    """The file of the log folder an order names; ValueError for anything else (a path, a
    name with '..')."""
    if not isinstance(name, str) or not _LOG_NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"not a runner log's name: {str(name)[:80]!r}")
    return os.path.join(os.environ.get(LOGS_ENV) or os.getcwd(), name)


def same_key(given: str | None, key: str) -> bool:
    """A bearer header's key against ours, in constant time; no key of ours: never."""
    return bool(key) and hmac.compare_digest((given or "").encode(), f"Bearer {key}".encode())


#: the lines written to the log as a request goes, so that the supervisor can say what the
#: process was doing if it dies (``Runner.activity``): one as a prompt's decode begins, one
#: as the answer's generation begins, one when the answer ends. Three short lines a request.
HOST_PROMPT = "smackctl runner: decoding "
HOST_GENERATING = "smackctl runner: generating after "
HOST_ANSWERED = "smackctl runner: answered"

#: the words a refused grammar's error starts with; the supervisor answers it with a 400
BAD_GRAMMAR = "the request's grammar could not be parsed"
