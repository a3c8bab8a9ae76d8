"""Settings and the profile schema.

A profile is a YAML file naming a set of models with their load parameters, a memory budget,
sampling defaults and routing. Every error names ``file:line key.path: what is wrong``; several
errors are reported at once. Unknown keys are rejected (a typo must not be silently ignored).
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from smackctl.errors import ConfigError, UsageError
from smackctl.paths import DEFAULT_HOST, DEFAULT_PORT, list_profile_files, profile_dirs
from smackctl.profile_refs import Loc, Problem, cross_references, fields_at, suggest

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "LOCAL_BACKENDS",
    "Auto",
    "CacheSettings",
    "Cpu",
    "Group",
    "Defaults",
    "MemoryBudget",
    "ModelSpec",
    "Profile",
    "ProfileIssue",
    "Routing",
    "UsageLog",
    "find_profile",
    "list_profile_files",
    "load_profile",
    "parse_size",
    "profile_dirs",
    "validate_model_name",
    "validate_profile_file",
]


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "ki": 1024,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gi": 1024**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ti": 1024**4,
    "tib": 1024**4,
}
_DURATION_RE = re.compile(r"^\s*(\d+)\s*(s|m|h|d)?\s*$")


def validate_model_name(name: str) -> str:
    """A model name never becomes a path: letters, digits, '.', '_', '-' and no '..'."""
    if not _NAME_RE.match(name) or ".." in name:
        raise UsageError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' "
            "(at most 64, starting with a letter or digit, no '..')",
            "pick another name, e.g. `--name my-model`",
        )
    return name


def _name_problem(name: str) -> str | None:
    """What is wrong with a model, alias or group name in a profile, or None."""
    try:
        validate_model_name(name)
    except UsageError as exc:
        return exc.message
    return None


def _as_schema_error(problem: str | None) -> None:
    """A problem raised as pydantic's own error: it is reported with the others and its key,
    where a UsageError would escape pydantic and hide them."""
    if problem is not None:
        raise PydanticCustomError("model_name", "{problem}", {"problem": problem})


def parse_size(value: int | float | str) -> int:
    """``12GiB`` → bytes. Plain numbers are bytes."""
    if isinstance(value, int | float):
        return int(value)
    m = _SIZE_RE.match(value)
    if not m or (m.group(2) or "").lower() not in _UNITS:
        raise ValueError(f"not a size: {value!r} (write e.g. 512MiB, 12GiB)")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def parse_duration(value: int | str) -> int:
    """``10m`` → 600 seconds. Plain numbers are seconds."""
    if isinstance(value, int):
        return value
    m = _DURATION_RE.match(value)
    if not m:
        raise ValueError(f"not a duration: {value!r} (write e.g. 300, 5m, 1h)")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2) or "s"]


def parse_keep_alive(value: object) -> float | None:
    """How long a model stays loaded once idle, as Ollama's clients send ``keep_alive``:
    seconds (a number or a string), a duration (``5m``, ``1h``), ``-1`` (any negative: never
    unload, returned as None) or ``0`` (unload once the answer is done). ValueError else."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a keep_alive: {json.dumps(value)[:40]} (write e.g. 300, 5m, -1, 0)")
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            seconds = float(parse_duration(text))
        except ValueError:
            raise ValueError(
                f"not a keep_alive: {text[:40]} (write e.g. 300, 5m, -1 to keep it, 0 to unload)"
            ) from None
    if seconds != seconds or seconds == float("inf"):
        raise ValueError(f"not a keep_alive: {text[:40]}")
    return None if seconds < 0 else seconds


Size = Annotated[int, Field(ge=0)]


Backend = Literal["llama-cpp-python", "llama-server", "openai"]
#: the backends whose runners the supervisor starts (``openai``: a server elsewhere)
LOCAL_BACKENDS = ("llama-cpp-python", "llama-server")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    """One model: where its GGUF comes from and how to load it."""

    source: str | None = None  # pypi:PACKAGE#FILE, https://…, hf:OWNER/REPO/FILE
    path: str | None = None  # a local GGUF file
    sha256: str | None = None
    n_ctx: int = Field(2048, gt=0)
    n_gpu_layers: int = Field(0, ge=-1)
    threads: int | None = Field(None, gt=0)
    parallel: int = Field(1, gt=0)
    #: requests that may wait for a slot; unset: as many as ``memory.queue`` holds
    max_queue: int | None = Field(None, ge=0)
    ttl: int = Field(600, ge=0)  # seconds idle before unload; 0 = never
    #: seconds a runner may make no progress while a request waits on it (no token, no
    #: prompt batch, no step of one); one that makes none is killed and restarted (a hang:
    #: a stuck compute thread, a hung GPU kernel; a slow runner moves and is never killed)
    hang_timeout: float = Field(60.0, gt=0)
    pinned: bool = False
    preload: bool = False
    aliases: tuple[str, ...] = ()
    chat_format: str | None = None
    #: false: a base model, refused for chat before its file is even pulled (a file without
    #: a chat template says so itself once it is on disk)
    chat: bool | None = None
    #: what serves it: llama-cpp-python's llama_cpp.server (in-process swaps), or llama.cpp's
    #: own llama-server (continuous batching over ``parallel`` slots, less memory)
    backend: Backend = "llama-cpp-python"
    args: dict[str, str | int | float | bool] = Field(default_factory=dict)
    # -- `backend: openai`: an OpenAI-compatible server elsewhere (gateway.py) --------------
    #: its base URL, with the /v1 (vLLM, Ollama's /v1, llama-server, LM Studio, a smackctl)
    url: str | None = Field(None, pattern=r"^https?://[^\s]+$")
    #: the model's name there (default: this entry's name)
    upstream_model: str | None = None
    #: the environment variable holding its API key (the key itself is never in a profile)
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    #: seconds to connect, and for the answer's head or its next chunk
    connect_timeout: float = Field(5.0, gt=0)
    timeout: float = Field(600.0, gt=0)
    #: seconds one attempt may take in all, head to last byte: a server that drips a byte
    #: just under ``timeout`` is cut here (504, or an error event once a stream began)
    deadline: float = Field(1800.0, gt=0)
    #: the most a whole (not streamed) answer may hold once decoded: a compressed answer
    #: that inflates to gigabytes is refused here (502)
    max_answer_size: int = Field(64 * 1024**2, gt=0)
    verify_tls: bool = True
    #: the route probed every ``health_interval`` seconds (relative to ``url``)
    health_path: str = "/models"
    health_interval: float = Field(10.0, gt=0)
    #: retries on the same server for a connection error, a timeout, a 5xx or a 429
    retries: int = Field(2, ge=0, le=10)
    #: its context in tokens, when known: a longer prompt goes to a fallback that fits
    context_length: int | None = Field(None, gt=0)
    #: tried in order when this model fails before its answer's first byte
    fallbacks: tuple[str, ...] = ()
    #: circuit breaker: seconds open before one probe request decides
    breaker_open_for: float = Field(30.0, gt=0)
    #: the response cache for this model: true (the profile's settings, or the defaults),
    #: false (never, even when the profile caches), unset (as the profile says)
    cache: bool | None = None

    @field_validator("ttl", "hang_timeout", "deadline", mode="before")
    @classmethod
    def _ttl(cls, v: Any) -> Any:
        return parse_duration(v) if isinstance(v, str) else v

    @field_validator("max_answer_size", mode="before")
    @classmethod
    def _answer_size(cls, v: Any) -> Any:
        return parse_size(v) if isinstance(v, str) else v

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError("must be 64 lowercase hex digits")
        return v

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for a in v:
            _as_schema_error(_name_problem(a))
        return v

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if self.backend == "openai":
            if self.url is None or self.source is not None or self.path is not None:
                raise ValueError("`backend: openai` takes a `url` (and no `source` or `path`)")
            return self
        if self.url is not None:
            raise ValueError("`url` is for `backend: openai` (a server elsewhere)")
        if (self.source is None) == (self.path is None):
            raise ValueError("give exactly one of `source` or `path`")
        return self

    @property
    def remote(self) -> bool:
        return self.backend == "openai"

    def load_key(self) -> tuple[Any, ...]:
        """Parameters whose change needs a reload of the runner."""
        return (
            self.source,
            self.path,
            self.n_ctx,
            self.n_gpu_layers,
            self.threads,
            self.parallel,
            self.chat_format,
            self.backend,
            tuple(sorted(self.args.items())),
        )


class MemoryBudget(_Strict):
    ram: Size | None = None  # None: what the machine has available minus the reserve
    vram: Size | None = None
    reserve: Size = 2 * 1024**3
    max_loaded: int | None = Field(None, gt=0)
    #: keep one runner process with llama_cpp.server imported, ready for the next load
    #: (~0.85 s faster loads, ~80 MB of RAM)
    spare_runner: bool = True
    #: the memory requests waiting for a slot may hold, all models together: their bodies
    #: and 64 KiB each (4,096 small requests in the default)
    queue: Size = Field(256 * 1024**2, gt=0)

    @field_validator("ram", "vram", "reserve", "queue", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        return parse_size(v) if isinstance(v, str) else v


class Defaults(_Strict):
    temperature: float | None = Field(None, ge=0, le=5)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, gt=0)
    seed: int | None = None


class Auto(_Strict):
    """``model: auto``: which model answers which kind of request (daemon/route.py)."""

    #: requests about programming: code fences, stack traces, file names, keywords
    code: str | None = None
    #: everything else
    general: str
    #: a prompt too long for the chosen model's context goes here (when it fits)
    long: str | None = None
    #: requests that need tools / embeddings
    tools: str | None = None
    embeddings: str | None = None
    #: a small model asked "is this about programming?" when the rules cannot tell
    classifier: str | None = None


class Routing(_Strict):
    default_model: str | None = None
    aliases: dict[str, str] = Field(default_factory=dict)
    auto: Auto | None = None


class CacheSettings(_Strict):
    """The response cache (daemon/cache.py): answers of deterministic requests replayed."""

    ttl: int = 3600
    max_size: Size = 256 * 1024**2
    #: the largest answer kept (a longer one is served, not kept): one long stream must
    #: not push out hundreds of short answers, nor be held in memory whole to be kept
    max_entry: Size = 8 * 1024**2

    @field_validator("ttl", mode="before")
    @classmethod
    def _ttl(cls, v: Any) -> Any:
        return parse_duration(v) if isinstance(v, str) else v

    @field_validator("max_size", "max_entry", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        return parse_size(v) if isinstance(v, str) else v


class UsageLog(_Strict):
    """The request log in state.db (daemon/store.py): each request's row for ``keep_raw``,
    then per-day totals for good (what `smackctl usage` reads past that)."""

    keep_raw: int = Field(30 * 86400, ge=86400)

    @field_validator("keep_raw", mode="before")
    @classmethod
    def _keep(cls, v: Any) -> Any:
        return parse_duration(v) if isinstance(v, str) else v


Policy = Literal["priority", "round-robin", "least-busy", "latency"]


class Group(_Strict):
    """One public model name in front of several deployments (models of the profile, local
    or ``backend: openai``)."""

    deployments: tuple[str, ...] = Field(min_length=1)
    policy: Policy = "priority"
    #: models or groups tried in order when every deployment failed before the first byte
    fallbacks: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()


class Cpu(_Strict):
    #: the cores that runners computing on the CPU share (default: the physical cores)
    cores: int | None = Field(None, gt=0)


class Profile(_Strict):
    name: str
    description: str = ""
    #: the backend of every model of the profile that names none
    backend: Backend | None = None
    #: the llama-server binary (a CUDA build, say); default: the one `make install` built
    llama_server: str | None = None
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    #: every GGUF file under this folder is a model too, named from its file (discover.py);
    #: a model of `models:` with the same name or file wins
    models_dir: str | None = None
    groups: dict[str, Group] = Field(default_factory=dict)
    #: the plugins (slash commands) this profile enables, each with its settings; none by
    #: default: a plugin runs code, so the operator chooses (smackctl.plugins)
    plugins: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    #: the response cache, off unless set here or per model (``cache: true``)
    cache: CacheSettings | None = None
    #: how long each request's own row is kept (`usage: {keep_raw: 30d}`)
    usage: UsageLog = UsageLog()
    #: more names clients may reach the supervisor by (the Host header: a reverse proxy's,
    #: a DNS name of the machine); on a LAN bind its own addresses and names are admitted
    allowed_hosts: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _default_backend(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("backend") and isinstance(data.get("models"), dict):
            models = {
                name: ({"backend": data["backend"], **raw} if isinstance(raw, dict) else raw)
                for name, raw in data["models"].items()
            }
            data = {**data, "models": models}
        return data

    memory: MemoryBudget = MemoryBudget()
    cpu: Cpu = Cpu()
    defaults: Defaults = Defaults()
    routing: Routing = Routing()

    @model_validator(mode="after")
    def _references(self, info: ValidationInfo) -> Profile:
        if info.context and info.context.get(_CHECKED_ALREADY):
            return self  # validate_profile_file checked them, each at its own line
        data = self.model_dump(include={"models", "groups", "routing"})
        problems = _reference_problems(data)
        if problems:
            raise ValueError("; ".join(f"{_key(loc)}: {msg}" for loc, msg in problems))
        return self

    def resolve(self, name: str) -> str | None:
        """Model name for a name or alias, or None."""
        if name in self.models:
            return name
        if name in self.routing.aliases:
            return self.routing.aliases[name]
        for model, spec in self.models.items():
            if name in spec.aliases:
                return model
        return None

    def resolve_spec_path(self, spec: ModelSpec, base: Path) -> Path | None:
        return None if spec.path is None else resolve_path(spec.path, base)


def resolve_path(text: str, base: Path) -> Path:
    """A profile's ``path:`` as a file: variables and ~ expanded, relative to its folder."""
    p = Path(os.path.expandvars(text)).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


#: a validation context key: the cross-references were checked on the file's data already
_CHECKED_ALREADY = "references_checked"


def _reference_problems(data: dict[str, Any]) -> list[Problem]:
    return cross_references(data, tuple(Auto.model_fields), _name_problem)


def _key(loc: Loc) -> str:
    """A key path as written in an issue: a list item's index left out (its line tells)."""
    while loc and isinstance(loc[-1], int):
        loc = loc[:-1]
    return ".".join(str(p) for p in loc)


# --------------------------------------------------------------------------- loading


@dataclass
class ProfileIssue:
    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where} {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


@dataclass
class _Located:
    data: Any
    lines: dict[tuple[str | int, ...], int] = field(default_factory=dict)


#: the most values a profile may expand to, aliases counted each time they are used, and the
#: deepest it may nest: the shipped profiles have 14 to 30 values, a profile of 100 models
#: a few thousand, and they nest 5 deep; YAML aliases of aliases grow without limit (6 levels
#: of 10: a million values, seconds and 100+ MB). Walking 20,000 takes ~45 ms, on a thread
#: that shares the GIL with the event loop (100,000: ~290 ms, and 50 ms of loop lag)
MAX_NODES = 20_000
MAX_DEPTH = 64


class _Refused(Exception):
    """A profile's YAML that is refused before it is read as data: an alias bomb, an alias
    inside itself, nesting past MAX_DEPTH, a key that is not a plain value."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path, self.message = path, message
        self.lines: dict[tuple[str | int, ...], int] = {}


def _compose(text: str) -> _Located:
    """YAML → plain data, plus the line of every key path (for error messages). Raises
    ``_Refused`` for an alias bomb, a self-reference, a nesting past MAX_DEPTH or a key that
    is not a plain value; every value is counted as it is walked, so the cost is bounded."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:  # PyYAML's composer recurses: `[[[[…` thousands deep
        raise _Refused((), f"nests more than {MAX_DEPTH} levels deep") from None
    lines: dict[tuple[str | int, ...], int] = {}
    loader = yaml.SafeLoader("")  # one constructor for every scalar
    inside: set[int] = set()  # the nodes being walked now: an alias to one is a cycle
    count = 0

    def walk(n: yaml.Node | None, path: tuple[str | int, ...]) -> Any:
        nonlocal count
        if n is None:
            return None
        count += 1
        if count > MAX_NODES:
            raise _Refused(
                path,
                f"expands to more than {MAX_NODES:,} values (YAML aliases "
                "used over and over?): write the values out, or use fewer aliases",
            )
        if len(path) > MAX_DEPTH:
            raise _Refused(path, f"nests more than {MAX_DEPTH} levels deep")
        lines.setdefault(path, n.start_mark.line + 1)
        if not isinstance(n, yaml.MappingNode | yaml.SequenceNode):
            return loader.construct_object(n, deep=True)
        if id(n) in inside:
            raise _Refused(
                path,
                "a YAML alias refers to a value that contains it (`&a` … "
                "`*a` inside itself): remove the alias",
            )
        inside.add(id(n))
        try:
            if isinstance(n, yaml.SequenceNode):
                return [walk(v, (*path, i)) for i, v in enumerate(n.value)]
            out: dict[Any, Any] = {}
            for k, v in n.value:
                if not isinstance(k, yaml.ScalarNode):
                    raise _Refused(path, "a key must be a plain value, not a list or mapping")
                key = k.value
                lines[(*path, key)] = k.start_mark.line + 1
                out[key] = walk(v, (*path, key))
            return out
        finally:
            inside.discard(id(n))

    try:
        return _Located(walk(node, ()), lines)
    except _Refused as exc:
        exc.lines = lines
        raise
    finally:
        loader.dispose()


def _expand_env(data: Any) -> Any:
    if isinstance(data, str):
        return _ENV_RE.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), data)
    if isinstance(data, dict):
        return {k: _expand_env(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_expand_env(v) for v in data]
    return data


def _line_for(loc: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int]) -> int | None:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


#: the largest profile file read: a real one is a few KiB
MAX_PROFILE_BYTES = 1024 * 1024


def _read_text(path: Path) -> str:
    """The file's text; ValueError (in words) for what is no profile: not a regular file (a
    FIFO would block the read for good), over MAX_PROFILE_BYTES, not UTF-8."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens without a writer
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file: a profile is a .yaml file")
        data = f.read(MAX_PROFILE_BYTES + 1)
    if len(data) > MAX_PROFILE_BYTES:
        raise ValueError(f"over {MAX_PROFILE_BYTES // 1024} KiB: a profile is a few KiB of YAML")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {exc.start})") from None


def validate_profile_file(path: Path) -> tuple[Profile | None, list[ProfileIssue]]:
    """Parse and validate one profile file; never raises for a bad file. Every problem the
    file has is reported in this one pass, in the order of its lines: the schema's (types,
    values, unknown keys), the cross-references' and missing files, each at the line of its
    key, with "did you mean" for a misspelt key or model name."""
    shown = _display(path)
    try:
        text = _read_text(path)
    except OSError as exc:
        return None, [ProfileIssue(shown, None, "", f"cannot read: {exc.strerror}")]
    except ValueError as exc:
        return None, [ProfileIssue(shown, None, "", str(exc))]
    try:
        located = _compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        return None, [ProfileIssue(shown, line, "", f"invalid YAML: {problem}")]
    except _Refused as exc:
        key = ".".join(str(p) for p in exc.path)
        return None, [ProfileIssue(shown, _line_for(exc.path, exc.lines), key, exc.message)]
    data = located.data
    if data is None:
        # an editor that empties the file before it writes it must not unload every model
        return None, [ProfileIssue(shown, None, "", "the file is empty: a profile is a mapping "
                                   "(key: value), at least `models: {}`")]  # fmt: skip
    if not isinstance(data, dict):
        return None, [ProfileIssue(shown, 1, "", "a profile must be a mapping (key: value)")]
    data = _expand_env(data)
    data.setdefault("name", path.stem)
    problems = [(loc, _key(loc), msg) for loc, msg in _reference_problems(data)]
    problems += [(loc, _key(loc), msg) for loc, msg in _missing_files(data, path.parent)]
    profile: Profile | None = None
    try:
        profile = Profile.model_validate(data, context={_CHECKED_ALREADY: True})
    except ValidationError as exc:
        problems += [_schema_problem(err) for err in exc.errors()]
    issues = [
        ProfileIssue(shown, _line_for(loc, located.lines), key, msg) for loc, key, msg in problems
    ]
    issues.sort(key=lambda i: i.line or 0)  # stable: one line's issues keep their order
    return (profile if not issues else None), issues


def _schema_problem(err: Any) -> tuple[Loc, str, str]:
    """One of pydantic's errors as (where, key path, message in words)."""
    loc = tuple(err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = _unknown_key(loc)
    elif (
        "input" in err
        and err["type"] not in ("missing", "model_name")
        and not isinstance(err["input"], dict)
    ):
        msg = f"{msg}, got {err['input']!r}"
    return loc, ".".join(str(p) for p in loc), msg


def _unknown_key(loc: Loc) -> str:
    """What to say of the key at ``loc`` the schema has no place for: the key it may have
    meant, or where it belongs, or to remove it."""
    word = str(loc[-1])
    close = suggest(word, fields_at(Profile, loc[:-1]))
    if close:
        return f"unknown key{close} (else remove it)"
    if len(loc) == 1 and word in ModelSpec.model_fields:
        return f"unknown key here: `{word}` is a model's setting, put it under `models.NAME`"
    return "unknown key (remove it, or check its spelling)"


def _missing_files(data: dict[str, Any], base: Path) -> list[Problem]:
    """Each local model's ``path:`` that names no file."""
    out: list[Problem] = []
    models = data.get("models")
    for name, raw in (models if isinstance(models, dict) else {}).items():
        if not isinstance(raw, dict) or not isinstance(raw.get("path"), str):
            continue
        if (raw.get("backend") or data.get("backend")) == "openai":
            continue  # the schema says that `path` is not for it
        p = resolve_path(raw["path"], base)
        if not p.is_file():
            why = f"no such file: {p} (fix the path, or use `source:`)"
            out.append((("models", name, "path"), why))
    return out


#: a profile file → ((size, mtime), the names it resolves): what profiles_defining read
_DEFINED: dict[Path, tuple[tuple[int, int], frozenset[str]]] = {}


def _names_defined(path: Path, parse: bool) -> frozenset[str] | None:
    """The model names and aliases the profile at ``path`` resolves; None when it cannot be
    read, or when ``parse`` is False and it changed since it was last read."""
    try:
        st = path.stat()
    except OSError:
        return None
    stamp = (st.st_size, st.st_mtime_ns)
    known = _DEFINED.get(path)
    if known is not None and known[0] == stamp:
        return known[1]
    if not parse:
        return None
    profile, _ = validate_profile_file(path)
    names: frozenset[str] = frozenset()
    if profile is not None:
        names = frozenset(
            [*profile.models, *profile.routing.aliases]
            + [a for spec in profile.models.values() for a in spec.aliases]
        )
    _DEFINED[path] = (stamp, names)
    return names


def profiles_defining(model: str, skip: str | None = None, *, parse: bool = True) -> list[str]:
    """The profiles (by name) that define ``model``, other than ``skip``: for the hint of an
    unknown model. Reads each profile file once per size and mtime; with ``parse=False``
    none is read (a stat each): what was read before answers (the supervisor asks so on its
    event loop, and reads the files on a thread)."""
    found = []
    for name, path in list_profile_files().items():
        if name == skip:
            continue
        names = _names_defined(path, parse)
        if names is not None and model in names:
            found.append(name)
    return found


def load_profile(path: Path) -> Profile:
    profile, issues = validate_profile_file(path)
    if profile is None:
        raise ConfigError(
            "invalid profile:\n" + "\n".join(f"  {i}" for i in issues),
            f"fix the file, then check it with `smackctl profile validate {_display(path)}`",
        )
    return profile


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- finding


def find_profile(name_or_path: str, extra: Iterable[Path] = ()) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p.resolve()
    found = list_profile_files(extra)
    if name_or_path in found:
        return found[name_or_path]
    raise UsageError(
        f"no profile named {name_or_path!r}; known: {', '.join(sorted(found)) or 'none'}",
        "see `smackctl profile list`, or give the path of a .yaml file",
    )
