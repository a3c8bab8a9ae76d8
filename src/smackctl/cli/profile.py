"""`smackctl profile list|show|validate|new|switch|reload`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from smackctl.errors import CommandFailed, SmackError, UsageError

from . import output
from ._common import client, follow_events
from ._group import Group
from .completion import complete_profile
from .profile_new import new

__all__ = ["app"]

app = typer.Typer(
    cls=Group,
    rich_markup_mode=None,  # click's plain help: typer's rich help imports 200 ms of rich
    help="YAML profiles: sets of models with parameters and a memory budget.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON only.")]
DirOpt = Annotated[list[Path] | None, typer.Option("--profile-dir", help="Also look here.")]
NameArg = Annotated[
    str, typer.Argument(help="Profile name or .yaml path.", autocompletion=complete_profile)
]


def _active() -> Path | None:
    from smackctl.paths import get_paths

    from .completion import active_profile_path

    return active_profile_path(get_paths().db_path)


@app.command("list")
def list_(json_: JsonOpt = False, profile_dir: DirOpt = None) -> None:
    """Profiles found in --profile-dir, $SMACKCTL_PROFILE_DIR, the config dir and the shipped
    ones (never ./profiles unless given); the active one is marked."""
    import yaml

    from smackctl.paths import list_profile_files

    active = _active()
    rows: list[dict[str, Any]] = []
    for name, path in list_profile_files(profile_dir or []).items():
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            data = {}
        models = data.get("models") if isinstance(data, dict) else None
        rows.append(
            {
                "name": name,
                "path": str(path),
                "active": path == active,
                "models": sorted(models) if isinstance(models, dict) else [],
                "description": data.get("description", "") if isinstance(data, dict) else "",
            }
        )
    if json_:
        output.print_json(rows)
        return
    output.table(
        ["", "NAME", "MODELS", "DESCRIPTION"],
        [
            ["*" if r["active"] else "", r["name"], ", ".join(r["models"]), r["description"]]
            for r in rows
        ],
    )


@app.command()
def show(name: NameArg, json_: JsonOpt = False, profile_dir: DirOpt = None) -> None:
    """A profile's models, budget, defaults and routing, as validated."""
    from smackctl.profile_file import find_profile, load_profile

    path = find_profile(name, profile_dir or [])
    prof = load_profile(path)
    if json_:
        output.print_json({"path": str(path), **prof.model_dump(mode="json")})
        return
    print(f"{prof.name}  ({path})")
    if prof.description:
        print(prof.description)
    mem = prof.memory
    print(
        f"memory: ram {output.human_bytes(mem.ram) if mem.ram else 'available − reserve'}, "
        f"reserve {output.human_bytes(mem.reserve)}, max_loaded {mem.max_loaded or '-'}"
    )
    if prof.cpu.cores is None:
        from smackctl.hardware import physical_cores

        print(f"cpu: {physical_cores()} cores (the physical ones) shared by the runners")
    else:
        print(f"cpu: {prof.cpu.cores} cores shared by the runners")
    output.table(
        ["MODEL", "SOURCE", "N_CTX", "GPU LAYERS", "TTL", "FLAGS", "ALIASES"],
        [
            [
                n,
                s.source or s.path,
                s.n_ctx,
                s.n_gpu_layers,
                s.ttl,
                " ".join(f for f, on in (("pinned", s.pinned), ("preload", s.preload)) if on)
                or "-",
                ", ".join(s.aliases) or "-",
            ]
            for n, s in prof.models.items()
        ],
    )
    if prof.routing.default_model:
        print(f"default model: {prof.routing.default_model}")


@app.command()
def validate(
    targets: Annotated[
        list[str] | None,
        typer.Argument(
            help="Profile names or .yaml paths (default: every profile).",
            autocompletion=complete_profile,
            show_default=False,
        ),
    ] = None,
    profile_dir: DirOpt = None,
) -> None:
    """Check profiles before anything is loaded: every problem of a file in one pass, each
    with its file:line, key and fix ("did you mean" for a misspelt key or model name)."""
    from smackctl.paths import list_profile_files
    from smackctl.profile_file import ProfileIssue, validate_profile_file

    dirs = profile_dir or []
    found: list[tuple[str, Path | None]] = [(t, _lookup(t, dirs)) for t in targets or []]
    if not targets:
        found = [(str(p), p) for p in list_profile_files(dirs).values()]
    if not found:
        raise UsageError(
            "no profile to validate",
            "give a name or a file, or add one to a profile dir that `smackctl config path` lists",
        )
    bad = 0
    for given, path in found:
        if path is None:
            issues = [ProfileIssue(given, None, "", _unknown_name(given, dirs))]
        else:
            profile, issues = validate_profile_file(path)
            if profile is not None:
                issues = _budget_issues(profile, path)
        if issues:
            bad += 1
            for issue in issues:
                print(str(issue))
        else:
            print(f"ok  {path}")
    if bad:
        output.error(
            f"{bad} of {len(found)} profile(s) have problems",
            "fix the lines above, then run `smackctl profile validate` again",
        )
        raise CommandFailed(1)


app.command()(new)


def _lookup(given: str, dirs: list[Path]) -> Path | None:
    """The file ``given`` names: a path (anything with a .yaml/.yml suffix or a slash, or a
    file that is there), else a profile's name as `show` and `switch` take it; None for a
    name no profile dir has."""
    from smackctl.paths import list_profile_files

    p = Path(given)
    if p.suffix in (".yaml", ".yml") or "/" in given or p.is_file():
        return p  # a path that is not there says so itself ("cannot read")
    return list_profile_files(dirs).get(given)


def _unknown_name(given: str, dirs: list[Path]) -> str:
    from smackctl.paths import list_profile_files
    from smackctl.profile_refs import suggest

    close = suggest(given, list_profile_files(dirs))
    return (
        f"no profile named {given!r}{close} (`smackctl profile list` shows them; "
        "a file is named by its path, e.g. ./mine.yaml)"
    )


def _budget_issues(profile: Any, path: Path) -> list[Any]:
    """Models whose estimate alone exceeds the profile's RAM budget (files on disk only)."""
    from smackctl.estimate import estimate_for
    from smackctl.gguf import read_info
    from smackctl.paths import get_paths
    from smackctl.profile_file import ProfileIssue

    if profile.memory.ram is None:
        return []
    out = []
    for name, spec in profile.models.items():
        file = profile.resolve_spec_path(spec, path.parent)
        if file is None:
            from smackctl.catalog import parse_source, stored_path

            source = parse_source(spec.source)
            file = stored_path(source, get_paths().models_dir, spec.sha256)
        if not file.is_file():
            continue
        try:
            need = estimate_for(read_info(file), spec).ram
        except SmackError as exc:
            out.append(ProfileIssue(str(path), None, f"models.{name}", exc.message))
            continue
        if need > profile.memory.ram:
            out.append(
                ProfileIssue(
                    str(path),
                    None,
                    f"models.{name}",
                    f"needs about {output.human_bytes(need)} but memory.ram is "
                    f"{output.human_bytes(profile.memory.ram)}: lower n_ctx (now {spec.n_ctx}) or "
                    "raise memory.ram",
                )
            )
    return out


def _print_plan(plan: dict[str, Any]) -> None:
    output.table(
        ["MODEL", "ACTION", "REASON", "RAM AFTER"],
        [
            [
                s["model"],
                s["action"],
                s["reason"] or "-",
                output.human_bytes(s["ram"]) if s["ram"] else "-",
            ]
            for s in plan["steps"]
        ],
    )
    print(
        f"memory: {output.human_bytes(plan['ram_before'])} loaded now → "
        f"{output.human_bytes(plan['ram_after'])} after, budget "
        f"{output.human_bytes(plan['budget_ram'])}"
    )
    for p in plan["problems"]:
        print(f"note: {p}")
    print(f"{plan['source']} → {plan['target']}: " + ("fits" if plan["fits"] else "does NOT fit"))


@app.command()
def switch(
    ctx: typer.Context,
    name: NameArg,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; change nothing.")
    ] = False,
    json_: JsonOpt = False,
    profile_dir: DirOpt = None,
) -> None:
    """Switch the supervisor to another profile: unload, reload, load — losing no request.

    With --dry-run: the exact plan and whether it fits (exit 0 if it can be done, 1 if not).
    A failed load rolls back to the previous profile."""
    from smackctl.profile_file import find_profile

    path = find_profile(name, profile_dir or [])
    with client(ctx, timeout=None) as c:  # type: ignore[arg-type]
        if dry_run:
            plan = c.post("/api/profiles/switch", {"path": str(path), "dry_run": True})
            output.print_json(plan) if json_ else _print_plan(plan)
            if not plan["fits"]:
                raise CommandFailed(1)
            return
        try:
            last = follow_events(
                c.ndjson("POST", "/api/profiles/switch", {"path": str(path)}), quiet=json_
            )
        except KeyboardInterrupt:
            output.info(
                "stopped following; the switch goes on in the supervisor: "
                "follow it with `smackctl status`"
            )
            raise CommandFailed(130) from None
    if last.get("event") == "error":
        raise SmackError(last["message"], last.get("hint"))
    if json_:
        output.print_json(last)
    else:
        print(f"profile {last['profile']} active")


@app.command()
def reload(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Read the active profile's file again and apply it, as a switch to it.

    The supervisor also does this by itself when the file changes. An invalid file is
    reported with its file:line key and the running configuration stays (exit 1)."""
    with client(ctx, autostart=False, timeout=None) as c:  # type: ignore[arg-type]
        result = c.post("/api/profiles/reload")
    if json_:
        output.print_json(result)
    elif not result["ok"]:
        problems = result.get("issues") or [result.get("error", "")]
        print("the profile was not reloaded; the running configuration stays:")
        for p in problems:
            print(f"  {p}")
    elif not result["changed"]:
        print(f"profile {result['profile']}: the file is as the supervisor runs it")
    else:
        _print_plan(result["plan"])
        print(f"profile {result['profile']} reloaded")
    if not result["ok"]:
        raise CommandFailed(1)
