"""Every error smackctl raises on purpose, in one tree.

    SmackError                      exit 1; ``hint`` names the command or setting that fixes it
    ├── UsageError                  exit 2; the user's input is wrong (bad name, bad flag value)
    ├── ConfigError                 a settings or profile file is invalid (file:line key.path: ...)
    ├── CommandFailed               a command said why itself: its exit code, nothing more said
    ├── SupervisorError
    │   ├── SupervisorNotRunning    exit 3; nothing answers on the supervisor's URL
    │   ├── NotTheSupervisor        exit 3; another program listens on the supervisor's port
    │   ├── SupervisorStartError    `smackctl start` could not bring the supervisor up
    │   │   └── PortInUse           the port is taken by another program
    │   ├── ApiError                the supervisor answered with an error (status, type, code)
    │   ├── ShuttingDown            503: the supervisor is stopping, or its drain ran out
    │   └── StateUnwritable         503: state.db takes no writes now (locked, disk full)
    ├── ModelError
    │   ├── ModelNotFound           404: no such model name or alias (lists the known ones)
    │   ├── ModelLoadError          a runner could not start or load the model file
    │   ├── InsufficientMemory      507: the model cannot fit even after eviction
    │   ├── QueueFull               503: no room to wait for a slot (Retry-After says when)
    │   ├── UpstreamError           502: a runner's answer broke, or it died mid-way
    │   └── BenchBusy               409: a bench of that model is running
    ├── NoDeployment                503: every deployment of a chain failed or was skipped
    ├── FleetUnavailable            503: no member of the fleet can take the model now
    ├── SwitchFailed                409: a profile switch failed (rolled back) or cannot start
    ├── Forbidden                   403: the caller's key has not the scope or the model asked
    ├── UnknownKey                  404: no key of that name (`smackctl keys list`)
    ├── RateLimited                 429: a key over a limit (Retry-After, x-ratelimit-*)
    ├── DeadlineExceeded            504: the request's own deadline passed (X-Smackctl-Deadline)
    ├── PluginFailed                a plugin raised, or answered what is not an answer
    ├── PluginTimedOut              504: a plugin ran past its time
    └── PullError                   fetching a model file failed
        └── ChecksumMismatch        the file's sha256 is not the one expected

Lower-level exceptions (httpx, OSError, pydantic) are translated into this tree at one seam
each (``client.py`` for HTTP, ``config.py`` for files, ``catalog.py`` for downloads) with
``raise ... from exc``; the CLI entry point (``cli/app.py``) is the only place that turns them
into exit codes: 1 error, 2 usage, 3 supervisor not running, 130 after Ctrl-C.
"""

from __future__ import annotations

import os

__all__ = [
    "ApiError",
    "BenchBusy",
    "ChecksumMismatch",
    "CommandFailed",
    "ConfigError",
    "DeadlineExceeded",
    "Forbidden",
    "InsufficientMemory",
    "ModelError",
    "ModelLoadError",
    "ModelNotFound",
    "NoDeployment",
    "FleetUnavailable",
    "NotTheSupervisor",
    "PluginFailed",
    "PluginTimedOut",
    "PortInUse",
    "PullError",
    "QueueFull",
    "RateLimited",
    "ShuttingDown",
    "SmackError",
    "StateUnwritable",
    "SupervisorError",
    "SupervisorNotRunning",
    "SupervisorStartError",
    "SwitchFailed",
    "UnknownKey",
    "UpstreamError",
    "UsageError",
]


class SmackError(Exception):
    """Base of every error smackctl raises on purpose."""

    exit_code = 1
    #: HTTP status the supervisor answers with when this error crosses the API.
    status = 500
    #: OpenAI-style error type.
    error_type = "server_error"
    #: seconds a client should wait before it asks again (``Retry-After``), when known
    retry_after: float | None = None

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  fix: {self.hint}"
        return self.message


class UsageError(SmackError):
    exit_code = 2
    status = 400
    error_type = "invalid_request_error"


class ConfigError(SmackError):
    status = 400
    error_type = "invalid_request_error"


class SupervisorError(SmackError):
    pass


class SupervisorNotRunning(SupervisorError):
    exit_code = 3

    def __init__(self, url: str, hint: str | None = None) -> None:
        super().__init__(f"the supervisor is not running at {url}", hint or _start_at(url))
        self.url = url


def _start_at(url: str) -> str:
    """How to start a supervisor at ``url``: here with its port, or on the machine it names."""
    from urllib.parse import urlparse

    from smackctl.netaddr import is_loopback, is_wildcard

    try:
        u = urlparse(url)
        host, port = u.hostname or "", u.port
    except ValueError:
        return "start it with `smackctl start`"
    if host and not is_loopback(host) and not is_wildcard(host):
        return f"start it on {host} (`smackctl start --host ADDRESS`), or check --url"
    default = os.environ.get("SMACKCTL_PORT") or "7622"
    flag = f" --port {port}" if port is not None and str(port) != default else ""
    return f"start it with `smackctl start{flag}`"


class NotTheSupervisor(SupervisorError):
    """The port of the supervisor's URL is held by a process that is not the supervisor of
    this state dir (another program, another user's): the token is not sent to it."""

    exit_code = 3

    def __init__(self, url: str, pid: int | None) -> None:
        which = f"not the supervisor (pid {pid}) of this state dir" if pid else "not the supervisor"
        super().__init__(
            f"another program listens at {url}, {which}: the token and the request were not "
            "sent to it",
            "stop that program, or start smackctl on another port: `smackctl start --port N`",
        )
        self.url = url


class SupervisorStartError(SupervisorError):
    pass


class PortInUse(SupervisorStartError):
    def __init__(self, host: str, port: int) -> None:
        super().__init__(
            f"port {port} on {host} is already in use by another program",
            f"choose another port: `smackctl start --port {port + 1}` (or set SMACKCTL_PORT)",
        )
        self.port = port


class ApiError(SupervisorError):
    def __init__(
        self, message: str, status: int, error_type: str = "server_error", code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.code = code
        if status in (400, 422):  # the supervisor refused what the user asked for: usage
            self.exit_code = 2


class CommandFailed(SmackError):
    """A command that already said why it failed (a failing doctor check, an invalid
    profile, a switch that does not fit): the entry point exits with ``exit_code``, quietly."""

    def __init__(self, exit_code: int = 1) -> None:
        super().__init__("")
        self.exit_code = exit_code


class ShuttingDown(SupervisorError):
    status = 503
    error_type = "shutting_down"


class StateUnwritable(SupervisorError):
    status = 503
    error_type = "server_error"


class ModelError(SmackError):
    pass


class ModelNotFound(ModelError):
    status = 404
    error_type = "invalid_request_error"

    def __init__(self, name: str, known: list[str], elsewhere: list[str] | None = None) -> None:
        """``elsewhere``: other profiles that define a model of that name."""
        import difflib

        listing = ", ".join(sorted(known)) or "none"
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        guess = f"; did you mean {close[0]!r}?" if close else ""
        if elsewhere:
            other = elsewhere[0]
            hint = (
                f"{name} is a model of profile {other}: switch to it with "
                f"`smackctl profile switch {other}`"
            )
        elif close:
            hint = f"use `{close[0]}`, or see `smackctl models list`"
        else:
            hint = (
                "add one with `smackctl models add PATH --name NAME`, or see `smackctl models list`"
            )
        super().__init__(f"unknown model {name!r}{guess} (known models: {listing})", hint)
        self.name = name


class ModelLoadError(ModelError):
    status = 500
    error_type = "model_load_error"


class InsufficientMemory(ModelError):
    status = 507
    error_type = "insufficient_memory"


class QueueFull(ModelError):
    status = 503
    error_type = "queue_full"


class UpstreamError(ModelError):
    status = 502
    error_type = "runner_error"


class BenchBusy(ModelError):
    status = 409
    error_type = "conflict"


class SwitchFailed(SmackError):
    status = 409
    error_type = "switch_failed"


class Forbidden(SmackError):
    """The caller's key may not do this: its scope or its models do not reach it."""

    status = 403
    error_type = "permission_error"


class RateLimited(SmackError):
    """A key over one of its limits (``daemon/limits.py``); ``headers``: OpenAI's
    x-ratelimit-* for the key."""

    status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"  # OpenAI's

    def __init__(self, message: str, hint: str, wait: float, headers: dict[str, str]) -> None:
        super().__init__(message, hint)
        self.retry_after = wait
        self.headers = headers


class DeadlineExceeded(SmackError):
    """The request's deadline (``X-Smackctl-Deadline``) passed while it waited or ran."""

    status = 504
    error_type = "deadline_exceeded"
    code = "deadline_exceeded"


class UnknownKey(SmackError):
    status = 404
    error_type = "invalid_request_error"


class PullError(SmackError):
    status = 502
    error_type = "pull_error"


class ChecksumMismatch(PullError):
    def __init__(self, name: str, expected: str, actual: str) -> None:
        super().__init__(
            f"checksum mismatch for {name}: expected sha256 {expected}, got {actual}; "
            "the partial file was removed",
            f"pull it again with `smackctl models pull {name}`; if it fails again, "
            "the source changed: check the sha256 in the profile",
        )


class NoDeployment(SmackError):
    """Every deployment of a chain failed before its answer began, or was skipped."""

    status = 503
    error_type = "no_deployment"


class FleetUnavailable(SmackError):
    """No member of the fleet can take a model now (gone, draining, full, NATS away)."""

    status = 503
    error_type = "fleet_unavailable"
    retry_after = 5.0


class PluginFailed(SmackError):
    """A plugin raised, returned what is not an answer, or could not be loaded."""

    status = 500
    error_type = "plugin_error"


class PluginTimedOut(SmackError):
    status = 504
    error_type = "plugin_timeout"
