"""The profile's schema: a profile names a set of models with their load parameters, a
memory budget, sampling defaults and routing. Unknown keys are rejected (a typo must not be
silently ignored). Reading a profile's file, with every error at its ``file:line key.path``,
is ``profile_file.py``'s."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from smackctl.fleet_config import FleetSpec
from smackctl.kv_config import KvCache
from smackctl.paths import DEFAULT_HOST, DEFAULT_PORT
from smackctl.profile_refs import Loc, Problem, cross_references
from smackctl.units import (
    name_problem,
    parse_duration,
    parse_keep_alive,
    parse_size,
    validate_model_name,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "LOCAL_BACKENDS",
    "Auto",
    "CacheSettings",
    "Cpu",
    "Defaults",
    "Group",
    "MemoryBudget",
    "ModelSpec",
    "Profile",
    "Routing",
    "UsageLog",
    "parse_duration",
    "parse_keep_alive",
    "parse_size",
    "resolve_path",
    "validate_model_name",
]


def _as_schema_error(problem: str | None) -> None:
    """A problem raised as pydantic's own error: it is reported with the others and its key,
    where a UsageError would escape pydantic and hide them."""
    if problem is not None:
        raise PydanticCustomError("model_name", "{problem}", {"problem": problem})


Size = Annotated[int, Field(ge=0)]


Backend = Literal["llama-cpp-python", "llama-server", "openai"]
#: the backends whose runners the supervisor starts (``openai``: a server elsewhere)
LOCAL_BACKENDS = ("llama-cpp-python", "llama-server")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Strict):
    """USD per million tokens, read and written."""

    input: float = Field(ge=0, le=1e6)
    output: float = Field(ge=0, le=1e6)

    def of(self, tokens_in: int | None, tokens_out: int | None) -> float:
        return ((tokens_in or 0) * self.input + (tokens_out or 0) * self.output) / 1e6


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
    #: llama-server's prompt caches in RAM (``--cache-ram``): more conversations than slots
    #: kept warm; counted in the model's memory as a whole
    cache_ram: Size = 0
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
    #: what a million tokens cost here (USD): the usage log's costs, a key's ``budget_usd``,
    #: a group's ``cost`` policy; and how good it is (a group's ``quality`` policy)
    price: Price | None = None
    quality: int | None = Field(None, ge=0, le=1000)
    #: circuit breaker: seconds open before one probe request decides
    breaker_open_for: float = Field(30.0, gt=0)
    #: the response cache for this model: true (the profile's settings, or the defaults),
    #: false (never, even when the profile caches), unset (as the profile says)
    cache: bool | None = None

    @field_validator("ttl", "hang_timeout", "deadline", mode="before")
    @classmethod
    def _ttl(cls, v: Any) -> Any:
        return parse_duration(v) if isinstance(v, str) else v

    @field_validator("max_answer_size", "cache_ram", mode="before")
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
            _as_schema_error(name_problem(a))
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
        if self.cache_ram and self.backend != "llama-server":
            raise ValueError("`cache_ram` is llama-server's: give `backend: llama-server`")
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
            *((self.cache_ram,) if self.cache_ram else ()),  # unset: measurements kept
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
    #: one key's cached answers are replayed to another key too (off: a hit never tells one
    #: key what another asked)
    shared: bool = False
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


Policy = Literal["priority", "round-robin", "least-busy", "latency", "cost", "quality"]


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
    #: the fleet this supervisor joins (fleet_config.py); none: one machine, as ever
    fleet: FleetSpec | None = None
    kv_cache: KvCache = KvCache()  # conversations' KV caches on disk (kv_config.py)

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
            raise ValueError("; ".join(f"{key_path(loc)}: {msg}" for loc, msg in problems))
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


def key_path(loc: Loc) -> str:
    """A key path as written in an issue: a list item's index left out (its line tells)."""
    while loc and isinstance(loc[-1], int):
        loc = loc[:-1]
    return ".".join(str(p) for p in loc)


#: a validation context key: the cross-references were checked on the file's data already
_CHECKED_ALREADY = "references_checked"


def _reference_problems(data: dict[str, Any]) -> list[Problem]:
    return cross_references(data, tuple(Auto.model_fields), name_problem)
