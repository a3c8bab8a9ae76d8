"""`smackctl models list|ps|show|load|unload|bench|pull|add|rm`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from smackctl.errors import ApiError, CommandFailed, UsageError

from . import output
from ._common import client, follow_events, raise_for_event
from ._group import Group
from .bench import bench
from .completion import complete_model

__all__ = ["app"]

app = typer.Typer(
    cls=Group,
    rich_markup_mode=None,  # click's plain help: typer's rich help imports 200 ms of rich
    help="Known models: list, inspect, load, unload, bench, pull, add.",
    no_args_is_help=True,
)
app.command()(bench)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON only.")]
ModelArg = Annotated[
    str, typer.Argument(help="Model name or alias.", autocompletion=complete_model)
]


def _gib(n: int | None) -> str:
    return output.human_bytes(n)


@app.command("list")
def list_(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Known models: size, quantisation, architecture, context, on disk, loaded."""
    with client(ctx, autostart=False) as c:
        models = c.get("/api/models", params={"details": "1"})
    if json_:
        output.print_json(models)
        return
    rows = []
    for m in models:
        g = m.get("gguf") or {}
        rows.append(
            [
                m["name"],
                _gib(g.get("file_size")),
                g.get("quantization"),
                g.get("architecture"),
                g.get("context_length"),
                m["n_ctx"],
                "yes" if m["on_disk"] else "no",
                m["state"],
                can(m.get("capabilities") or {}),
            ]
        )
    output.table(
        ["NAME", "SIZE", "QUANT", "ARCH", "TRAINED CTX", "N_CTX", "ON DISK", "STATE", "CAN"],
        rows,
    )


#: the capabilities `models list` names, in this order, as `models show` does
_CAN = (
    ("chat", "chat"),
    ("tools", "tools"),
    ("embeddings", "embeddings"),
    ("rerank", "rerank"),
    ("fill_in_the_middle", "fim"),
    ("vision", "vision"),
)


def can(caps: dict[str, Any]) -> str:
    """What a model can serve, in words: "chat, tools", or "completion" for a base model;
    "?" for what a file not on disk yet may add (its chat template: read once it is pulled)."""
    said = [word for key, word in _CAN if caps.get(key)]
    if caps and not caps.get("chat"):
        said.insert(0, "completion" if caps.get("read", True) else "?")
    return ", ".join(said) or "-"


def _said(value: Any) -> str:
    """A setting's value in words: a list as a,b; a mapping as k=v (never a Python repr)."""
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


@app.command()
def ps(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Loaded models: state, memory (estimated and measured), ttl left, in-flight, queued."""
    with client(ctx, autostart=False) as c:
        st = c.get("/api/status")
    loaded = [m for m in st["models"] if m["state"] != "stopped"]
    if json_:
        output.print_json({"models": loaded, "memory": st["memory"]})
        return
    if not loaded:
        output.info("no model loaded; load one with `smackctl models load NAME`")
    else:
        output.table(
            ["NAME", "STATE", "PID", "EST RAM", "RSS", "VRAM", "TTL LEFT", "IN FLIGHT", "QUEUED"],
            [
                [
                    m["name"],
                    m["state"],
                    m["pid"],
                    _gib(m["estimated_ram"]),
                    _gib(m["rss"]),
                    _gib(m["measured_vram"]) if m["measured_vram"] else "-",
                    _ttl_left(m),
                    m["in_flight"],
                    m["queued"],
                ]
                for m in loaded
            ],
        )
    mem = st["memory"]
    print(
        f"total {_gib(mem['used_ram'])} of {_gib(mem['budget_ram'])} RAM budget; "
        f"{_gib(mem['free_ram'])} free"
    )


@app.command()
def show(ctx: typer.Context, name: ModelArg, json_: JsonOpt = False) -> None:
    """A model's parameters and GGUF metadata."""
    with client(ctx, autostart=False) as c:
        m = c.get(f"/api/models/{name}")
    if json_:
        output.print_json(m)
        return
    g = m.get("gguf") or {}
    rows: list[tuple[str, Any]] = [
        ("name", m["name"]),
        ("aliases", ", ".join(m["aliases"]) or None),
        ("file", m["file"]),
        ("on disk", "yes" if m["on_disk"] else "no (pull it)"),
        ("state", m["state"]),
        ("n_ctx", m["n_ctx"]),
        ("n_gpu_layers", m["n_gpu_layers"]),
        ("ttl", "pinned" if m["pinned"] else f"{m['ttl']}s"),
    ]
    if m.get("gguf_error"):
        rows.append(("file problem", m["gguf_error"]))
    if g:
        params = g.get("parameter_count")
        rows += [
            ("architecture", g.get("architecture")),
            ("model name", g.get("name")),
            ("parameters", f"{params / 1e6:.1f}M" if params else None),
            ("quantization", g.get("quantization")),
            ("file size", _gib(g.get("file_size"))),
            ("trained context", g.get("context_length")),
            ("layers", g.get("layers")),
            ("heads", g.get("heads")),
            ("kv heads", g.get("heads_kv")),
            ("embedding", g.get("embedding_length")),
            ("vocab", g.get("vocab_size")),
            ("chat template", "yes" if g.get("has_chat_template") else "no"),
            ("tools in the template", "yes" if g.get("template_tools") else "no"),
        ]
    caps = m.get("capabilities") or {}
    if caps:
        rows += [
            ("can serve", can(caps)),
            ("trained for embeddings", f"yes ({caps['pooling']} pooling)" if caps["pooling"]
             else "no"),
        ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {'-' if v is None else v}")


def _follow_progress(events: Any, name: str) -> dict[str, Any]:
    last = follow_events(events)
    raise_for_event(last)
    return last


def _ttl_left(m: dict[str, Any]) -> str:
    """What `models ps` says of a loaded model's idle time left: pinned, kept (a load's or a
    request's keep_alive of -1), after the answer (0), or how long (marked when set by a load
    or a request rather than the profile's ttl)."""
    if m["pinned"]:
        return "pinned"
    keep = m.get("keep_alive")
    if keep is not None and keep < 0:
        return "kept (keep_alive)"
    if m["ttl_left"] is None:
        return "never"
    left = output.human_duration(m["ttl_left"])
    return f"{left} (keep_alive)" if keep is not None else left


@app.command()
def load(
    ctx: typer.Context,
    name: ModelArg,
    force: Annotated[
        bool, typer.Option("--force", help="Load even if the memory estimate says it will not fit.")
    ] = False,
    estimate_only: Annotated[
        bool,
        typer.Option(
            "--estimate-only", help="Print what the load would need and evict; change nothing."
        ),
    ] = False,
    ttl: Annotated[
        str | None,
        typer.Option(
            "--ttl", help="Idle time before this load is unloaded: 300, 10m, -1 (never), 0."
        ),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Load a model (pulling it first if needed) and wait until it is ready."""
    if ttl is not None:  # the flag's words, before the supervisor's (keep_alive) would
        from smackctl.units import parse_keep_alive

        try:
            parse_keep_alive(ttl)
        except ValueError:
            raise UsageError(
                f"--ttl {ttl}: not an idle time", "write seconds (300), 10m, 2h, -1 (never) or 0"
            ) from None
    with client(ctx, timeout=600.0) as c:
        if estimate_only:
            plan = c.post(f"/api/models/{name}/load", {"estimate_only": True})
            if json_:
                output.print_json(plan)
            else:
                how = (
                    "measured at its last load"
                    if plan["measured"]
                    else f"weights {_gib(plan['weights'])}, KV cache {_gib(plan['kv_cache'])}, "
                    f"compute {_gib(plan['compute'])}, runner {_gib(plan['baseline'])}"
                )
                vram = f" + {_gib(plan['vram'])} VRAM" if plan["vram"] else ""
                print(f"{plan['model']}: needs {_gib(plan['ram'])} RAM{vram} ({how})")
                print(f"free in budget: {_gib(plan['free_ram'])} RAM")
                if plan["evict"]:
                    print("would evict: " + ", ".join(plan["evict"]))
                if plan["fits"]:
                    print("fits")
                elif plan["wait"]:
                    print("fits once busy models finish their requests")
                else:
                    print("does NOT fit, even after evicting every idle model")
            if not plan["fits"]:
                raise CommandFailed(1)
            return
        if force:
            output.warn(f"loading {name} even if the memory estimate says it will not fit")
        started = time.monotonic()
        last = _follow_progress(
            c.ndjson("POST", f"/api/models/{name}/load", {"force": force, "ttl": ttl}), name
        )
    took = time.monotonic() - started
    if json_:
        output.print_json({"model": name, "pid": last.get("pid"), "seconds": round(took, 3)})
    else:
        print(f"{name} ready (pid {last.get('pid')}, {took:.1f}s)")


@app.command()
def unload(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(help="Model name or alias.", autocompletion=complete_model)
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Unload every model.")] = False,
) -> None:
    """Stop a model's runner (or all of them) and give its memory back."""
    if (name is None) == (not all_):
        raise UsageError("give a model name or --all", "smackctl models unload NAME | --all")
    with client(ctx, autostart=False) as c:
        r = c.post(f"/api/models/{'--all' if all_ else name}/unload")
    done = r["unloaded"]
    output.info("unloaded " + ", ".join(done) if done else "nothing was loaded")


@app.command()
def pull(ctx: typer.Context, name: ModelArg) -> None:
    """Fetch a model's file into the model store (progress, sha256 check)."""
    with client(ctx, timeout=None) as c:  # type: ignore[arg-type]
        last = _follow_progress(c.ndjson("POST", f"/api/models/{name}/pull"), name)
    print(last.get("path", ""))


@app.command()
def add(
    ctx: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(help="A local .gguf file.", exists=True, dir_okay=False, resolve_path=True),
    ],
    name: Annotated[str | None, typer.Option("--name", help="Name (default: file stem).")] = None,
    n_ctx: Annotated[int | None, typer.Option("--n-ctx", min=1, help="Context length.")] = None,
    ttl: Annotated[
        str | None, typer.Option("--ttl", help="Idle time before it is unloaded: 300, 10m, 0.")
    ] = None,
    alias: Annotated[
        list[str] | None, typer.Option("--alias", help="Another name for it (repeatable).")
    ] = None,
    chat_format: Annotated[
        str | None,
        typer.Option("--chat-format", help="A chat format instead of the file's template."),
    ] = None,
    backend: Annotated[
        str | None, typer.Option("--backend", help="llama-cpp-python or llama-server.")
    ] = None,
) -> None:
    """Register a local GGUF file as a model (kept by the supervisor, beside the profile's)."""
    from smackctl.config import validate_model_name

    model = validate_model_name(name or path.stem.replace(" ", "-"))
    entry = {"path": str(path), "name": model, "n_ctx": n_ctx, "ttl": ttl,
             "aliases": alias or None, "chat_format": chat_format, "backend": backend}  # fmt: skip
    with client(ctx) as c:
        try:
            made = c.post("/api/models", entry)
        except ApiError as exc:
            raise UsageError(exc.message, exc.hint) from exc
    if isinstance(made.get("replaced"), dict):  # the same name again: a new entry, said
        lost = ", ".join(f"{k} {_said(v)}" for k, v in made["replaced"].items())
        output.info(f"replaced the model {model} added before"
                    + (f"; what it had and this one does not: {lost} (give them again to keep "
                       "them)" if lost else ""))  # fmt: skip
    print(model)


@app.command()
def rm(ctx: typer.Context, name: ModelArg) -> None:
    """Forget a model added with `models add` (the file is left where it is)."""
    with client(ctx) as c:
        c.request("DELETE", f"/api/models/{name}")
    output.info(f"removed {name}")


@app.command()
def discover(
    ctx: typer.Context,
    folder: Annotated[Path, typer.Argument(help="The folder the GGUF files are in.")],
    json_: JsonOpt = False,
) -> None:
    """Make every GGUF model under a folder a known model, named from its file (split files
    are one model, projectors go with their folder's models, duplicates are left out)."""
    with client(ctx) as c:
        got = c.post("/api/models/discover", {"dir": str(folder.expanduser().resolve())})
    if json_:
        output.print_json(got)
        return
    for m in got["added"]:
        extra = f", {m['parts']} parts" if m["parts"] > 1 else ""
        extra += f", projector {Path(m['projector']).name}" if m["projector"] else ""
        print(f"added {m['name']}  ({_gib(m['size'])}{extra})")
    for name in got["known"]:
        print(f"known already: {name}")
    for d in got["duplicates"]:
        print(f"left out {d['file']}: the same content as {d['same_as']}")
    for note in got["notes"]:
        output.warn(note)
    if not (got["added"] or got["known"]):
        output.info(f"no GGUF model under {folder}")
