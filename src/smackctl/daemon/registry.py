"""The known models: the active profile's and the ones added with `smackctl models add`,
each a ``Managed`` entry with everything the scheduler tracks about it."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from smackctl import catalog
from smackctl.config import ModelSpec, Profile, validate_model_name
from smackctl.discover import Scan, scan
from smackctl.errors import ModelLoadError, ModelNotFound, UsageError
from smackctl.estimate import Estimate
from smackctl.gguf import GGUFInfo, check_magic
from smackctl.paths import Paths
from smackctl.profile_file import profiles_defining

from .runner import Runner, RunnerState
from .store import Store

__all__ = ["Managed", "Registry", "forget_runner"]

log = logging.getLogger("smackctl.scheduler")


#: ``Managed.keep_alive`` for a model kept loaded however long it is idle
NEVER = -1.0


@dataclass
class Managed:
    """A known model and everything the scheduler tracks about it."""

    name: str
    spec: ModelSpec
    origin: str  # "profile" | "added"
    base_dir: Path
    runner: Runner | None = None
    loading: asyncio.Future[Runner] | None = None
    in_flight: int = 0
    last_used: float = 0.0
    use_count: int = 0
    requests_served: int = 0
    tokens_out: int = 0
    failures: int = 0
    failed: bool = False
    last_error: str | None = None
    #: crashes since the supervisor started, and the last one in words with its time
    crashes: int = 0
    last_crash: str | None = None
    last_crash_at: float | None = None
    phase: str | None = None
    estimate: Estimate | None = None
    measured_ram: int | None = None
    measured_vram: int | None = None
    measured_at: float = 0.0
    info: GGUFInfo | None = field(default=None, repr=False)
    #: how long it stays loaded once idle, for this load: a load's ``--ttl``, a request's
    #: ``keep_alive`` (the last one wins); ``NEVER`` (keep), 0 (after the answer); None:
    #: the profile's ``ttl``
    keep_alive: float | None = None

    def idle_limit(self) -> float | None:
        """Seconds idle before it is unloaded; None: never (pinned, ttl 0, keep_alive -1)."""
        if self.spec.pinned:
            return None
        if self.keep_alive is not None:
            return None if self.keep_alive == NEVER else self.keep_alive
        return float(self.spec.ttl) if self.spec.ttl > 0 else None

    @property
    def state(self) -> str:
        if self.runner is not None and self.runner.state != RunnerState.STOPPED:
            return str(self.runner.state)
        if self.loading is not None:
            return str(RunnerState.STARTING)
        return str(RunnerState.FAILED) if self.failed else str(RunnerState.STOPPED)

    @property
    def loaded(self) -> bool:
        return self.runner is not None and self.runner.state in (
            RunnerState.STARTING,
            RunnerState.READY,
            RunnerState.BACKOFF,
        )

    def memory(self) -> tuple[int, int]:
        """What the planner counts for this model: measured if known, else estimated; nothing
        while it waits to restart (its process is gone, and so is its memory)."""
        if self.runner is not None and self.runner.state in (
            RunnerState.BACKOFF,
            RunnerState.FAILED,
        ):
            return 0, 0
        if self.measured_ram is not None:  # llama-server's prompt caches may fill later
            return self.measured_ram + self.spec.cache_ram, self.measured_vram or 0
        if self.estimate is not None:
            return self.estimate.ram, self.estimate.vram
        return 0, 0


def _log_failure(read: asyncio.Future[list[str]]) -> None:
    if not read.cancelled() and (exc := read.exception()) is not None:
        log.warning("reading the profiles for the hint of an unknown model failed: %s", exc)


def forget_runner(m: Managed) -> None:
    m.runner = None
    m.measured_ram = m.measured_vram = None
    m.measured_at = 0.0
    m.failed = False
    m.keep_alive = None  # a load's own idle time ends with it


class Registry:
    """Models by name, rebuilt from the active profile and the store; it resolves a
    request's name (a model, an alias, or none: the profile's default) to one of them."""

    def __init__(self, paths: Paths, store: Store, profile: Profile, path: Path | None) -> None:
        self.paths = paths
        self.store = store
        self.models: dict[str, Managed] = {}
        self.profile = profile
        self.profile_path = path
        #: what the last scan of the profile's models_dir noticed (duplicates, missing parts)
        self.scan_notes: list[str] = []
        self._reading: asyncio.Future[list[str]] | None = None
        self.rebuild(profile, path)

    def rebuild(self, profile: Profile, path: Path | None, found: Scan | None = None) -> None:
        """The active profile is now ``profile``: add, update and drop entries (a loaded
        model that left the profile stays until it is unloaded). ``found``: the scan of its
        models_dir made for ``scan_request`` (on a thread); None: scanned here."""
        self.profile, self.profile_path = profile, path
        self.store.keep_raw = profile.usage.keep_raw  # how long raw request rows are kept
        wanted = self._wanted(profile, path)
        for name, spec in self.discovered(profile, path, set(wanted), found).items():
            wanted[name] = (spec, "discovered", Path("/"))
        for name in list(self.models):
            if name not in wanted and not self.models[name].loaded:
                del self.models[name]
        for name, (spec, origin, b) in wanted.items():
            m = self.models.get(name)
            if m is None:
                self.models[name] = Managed(name=name, spec=spec, origin=origin, base_dir=b)
            else:
                m.spec, m.origin, m.base_dir = spec, origin, b

    def _wanted(
        self, profile: Profile, path: Path | None
    ) -> dict[str, tuple[ModelSpec, str, Path]]:
        """The models of the profile and those added with `models add`, by name."""
        base = path.parent if path else Path.cwd()
        wanted: dict[str, tuple[ModelSpec, str, Path]] = {
            name: (spec, "profile", base)
            for name, spec in profile.models.items()
            if not spec.remote  # a server elsewhere: the gateway's, no runner (gateway.py)
        }
        for name, raw in self.store.added_models().items():
            wanted.setdefault(name, (ModelSpec.model_validate(raw), "added", Path("/")))
        return wanted

    def models_dir(self, profile: Profile, path: Path | None) -> Path | None:
        if profile.models_dir is None:
            return None
        d = Path(os.path.expandvars(profile.models_dir)).expanduser()
        return d if d.is_absolute() else ((path.parent if path else Path.cwd()) / d).resolve()

    def scan_request(
        self, profile: Profile, path: Path | None
    ) -> tuple[Path, frozenset[str], frozenset[Path]] | None:
        """The arguments of ``discover.scan`` for the profile's models_dir as the registry is
        now (the folder, the names taken, the files known), or None when it has none: the
        scan (it hashes files of the same size) then runs on a thread."""
        folder = self.models_dir(profile, path)
        if folder is None:
            return None
        return folder, frozenset(self._wanted(profile, path)), self._known_files()

    def _known_files(self) -> frozenset[Path]:
        return frozenset(
            Path(m.spec.path)
            for m in self.models.values()
            if m.origin == "discovered" and m.spec.path
        )

    def discovered(
        self, profile: Profile, path: Path | None, taken: set[str], found: Scan | None = None
    ) -> dict[str, ModelSpec]:
        """The models of the profile's ``models_dir`` not already known by name or file."""
        folder = self.models_dir(profile, path)
        if folder is None:
            return {}
        files = set()
        for spec in profile.models.values():
            p = profile.resolve_spec_path(spec, path.parent if path else Path.cwd())
            if p is not None:
                files.add(p.resolve())
        if found is None:
            found = scan(folder, frozenset(taken), self._known_files())
        self.scan_notes = [*found.notes] + [
            f"{dup} has the same content as {first}: left out" for dup, first in found.duplicates
        ]
        out: dict[str, ModelSpec] = {}
        backend = profile.backend or "llama-cpp-python"
        for f in found.found:
            if f.path.resolve() in files:
                continue
            args: dict[str, str | int | float | bool] = {}
            if f.projector is not None and backend == "llama-server":
                args["mmproj"] = str(f.projector)
            out[f.name] = ModelSpec(path=str(f.path), backend=backend, args=args)
        return out

    def known_names(self) -> list[str]:
        names = set(self.models)
        for m in self.models.values():
            names.update(m.spec.aliases)
        names.update(self.profile.routing.aliases)
        return sorted(names)

    def names_of(self, m: Managed) -> list[str]:
        """Every name a model answers to: its own, its aliases, the profile's aliases of it."""
        routed = [a for a, target in self.profile.routing.aliases.items() if target == m.name]
        return [m.name, *m.spec.aliases, *routed]

    def resolve(self, name: str | None) -> Managed:
        if not name:
            name = self.profile.routing.default_model
            if not name:
                listing = ", ".join(self.askable()) or "none here"
                raise UsageError(
                    f"the request names no model, and profile {self.profile.name} has no "
                    "`routing.default_model`",
                    f"name one (`-m MODEL`, or the request's `model`): {listing} (a fleet's "
                    "models: `smackctl fleet`), or set `routing.default_model` in the profile",
                )
        target = self.profile.resolve(name)
        if target is None:
            for m in self.models.values():
                if name == m.name or name in m.spec.aliases:
                    target = m.name
                    break
        if target is None or target not in self.models:
            if name in self.askable():  # a server elsewhere, a group, auto: no runner here
                raise UsageError(
                    f"{name} is not a model this supervisor runs (a server elsewhere, a "
                    "group or `auto`): it has no runner, file or log here",
                    "send requests to it by name; `smackctl backends` shows its state",
                )
            raise ModelNotFound(name, self.askable(), self._elsewhere(name))
        return self.models[target]

    def askable(self) -> list[str]:
        """Every name a request may give: the models here and their aliases, the servers
        elsewhere, the groups and theirs, `auto` when the profile routes it."""
        p = self.profile
        names = set(self.known_names()) | {n for n, spec in p.models.items() if spec.remote}
        names |= set(p.groups) | {a for g in p.groups.values() for a in g.aliases}
        if p.routing.auto is not None:
            names.add("auto")
        return sorted(names)

    def _elsewhere(self, name: str) -> list[str]:
        """The other profiles that define ``name``. On the event loop, from what the last
        read of the profile files found (YAML from any file is never parsed on the loop), and
        a read of the files that changed since is begun on a thread for the next time."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no event loop to hold: read them now
            return profiles_defining(name, skip=self.profile.name)
        known = profiles_defining(name, skip=self.profile.name, parse=False)
        self.read_profiles()  # after the look: what it finds is for the next time
        return known

    def read_profiles(self) -> asyncio.Future[list[str]]:
        """Read the profile files that changed since the last read, on a thread (one such
        read at a time); the supervisor begins one at its start."""
        if self._reading is None or self._reading.done():
            loop = asyncio.get_running_loop()
            self._reading = loop.run_in_executor(None, profiles_defining, "")
            self._reading.add_done_callback(_log_failure)
        return self._reading

    def add(self, name: str, path: Path, settings: dict[str, Any] | None = None) -> Managed:
        """Register a local file as a model; ``settings``: more of its entry (n_ctx, ttl,
        aliases, chat_format, backend), checked as a profile's would be."""
        validate_model_name(name)
        path = path.expanduser().resolve()
        try:
            check_magic(path)
        except ModelLoadError as exc:  # the path the user gave: their input, a 400
            raise UsageError(exc.message, exc.hint) from None
        if name in self.profile.models:
            raise UsageError(
                f"model {name} is defined by the active profile",
                "pick another name with `--name`",
            )
        raw: dict[str, Any] = {"path": str(path), **(settings or {})}
        try:
            spec = ModelSpec.model_validate(raw)
        except ValidationError as exc:
            e = exc.errors()[0]
            where = ".".join(str(p) for p in e["loc"]) or "the entry"
            raise UsageError(
                f"model {name}: {where}: {e['msg']}", "see `smackctl models add --help`"
            ) from None
        self.store.add_model(name, spec.model_dump(exclude_defaults=True))
        self.rebuild(self.profile, self.profile_path)
        return self.models[name]

    def to_restore(self) -> dict[str, str]:
        """The models to load at start, and why: loaded when the last supervisor stopped
        ("loaded"), or "pinned" / "preload" in the profile."""
        wanted = dict(self.store.restore())
        for m in self.models.values():
            if m.spec.pinned or m.spec.preload:
                wanted.setdefault(m.name, "pinned" if m.spec.pinned else "preload")
        return {name: why for name, why in wanted.items() if name in self.models}

    def model_file(self, m: Managed) -> Path:
        if m.spec.path is not None:
            p = Path(m.spec.path).expanduser()
            return p if p.is_absolute() else (m.base_dir / p).resolve()
        assert m.spec.source is not None
        source = catalog.parse_source(m.spec.source)
        return catalog.stored_path(source, self.paths.models_dir, m.spec.sha256)
