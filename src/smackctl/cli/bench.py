"""`smackctl models bench`: run benches through the supervisor, list and compare results."""

from __future__ import annotations

import datetime
from typing import Annotated, Any

import typer

from smackctl.errors import ModelLoadError, UsageError

from . import output
from ._common import client, raise_for_event
from .completion import complete_model

__all__ = ["bench"]

#: (key, column title) of each figure a bench measures, in table order.
_FIGURES: tuple[tuple[str, str], ...] = (
    ("load_s", "LOAD"),
    ("ttft_s", "FIRST TOKEN"),
    ("prompt_tps", "PROMPT TOK/S"),
    ("gen_tps", "GEN TOK/S"),
    ("peak_rss", "PEAK RSS"),
    ("vram", "VRAM"),
)


def _fmt(key: str, value: float | None, unit_of: float | None = None) -> str:
    """A figure with its unit; ``unit_of`` picks the unit (so a spread shares its median's)."""
    if value is None:
        return "-"
    ref = value if unit_of is None else unit_of
    if key.endswith("_s"):
        return f"{value * 1000:.0f} ms" if ref < 1 else f"{value:.2f} s"
    if key.endswith("_tps"):
        return f"{value:.1f}"
    return f"{value / 2**20:.1f} MiB"


def _cell(result: dict[str, Any], key: str) -> str:
    """Median, and ± half the range when there was more than one run."""
    s = result["summary"].get(key)
    if s is None:
        return "-"
    text = _fmt(key, s["median"])
    if s["n"] > 1 and s["max"] > s["min"]:
        spread = _fmt(key, (s["max"] - s["min"]) / 2, unit_of=s["median"])
        number, _, unit = spread.partition(" ")
        text = text.removesuffix(" " + unit) + f" ±{number}" + (f" {unit}" if unit else "")
    return text


def _columns(results: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The figures to show: VRAM only when some result has it."""
    return [
        (k, title)
        for k, title in _FIGURES
        if k != "vram" or any(r["summary"].get("vram") for r in results)
    ]


def _show_results(results: list[dict[str, Any]]) -> None:
    cols = _columns(results)
    output.table(
        ["MODEL", *(t for _, t in cols)],
        [[r["model"], *(_cell(r, k) for k, _ in cols)] for r in results],
    )
    p = results[0]["params"]
    output.info(
        f"{p['prompt_tokens']} prompt tokens, {p['gen_tokens']} generated, {p['runs']} run(s) "
        "each: median ±half the range"
    )
    for r in results:
        if r["was_loaded"] and not r["params"]["cold"]:
            output.info(
                f"{r['model']} was already loaded: load time not measured "
                "(--cold unloads and loads it for every run)"
            )


def _show_history(results: list[dict[str, Any]]) -> None:
    cols = _columns(results)
    rows = []
    for r in results:
        p, mp = r["params"], r["model_params"]
        when = datetime.datetime.fromtimestamp(r["at"]).strftime("%Y-%m-%d %H:%M")
        rows.append(
            [
                r["id"],
                when,
                r["model"],
                mp.get("n_ctx"),
                p["prompt_tokens"],
                p["gen_tokens"],
                p["runs"],
                *(_cell(r, k) for k, _ in cols),
            ]
        )
    output.table(
        ["ID", "WHEN", "MODEL", "N_CTX", "PROMPT", "GEN", "RUNS", *(t for _, t in cols)], rows
    )


def _ratios(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for k, _ in _FIGURES:
        sa, sb = a["summary"].get(k), b["summary"].get(k)
        out[k] = sb["median"] / sa["median"] if sa and sb and sa["median"] else None
    return out


def _show_compare(a: dict[str, Any], b: dict[str, Any]) -> None:
    ratio = _ratios(a, b)
    rows: list[list[Any]] = [
        [title, _cell(a, k), _cell(b, k), "-" if ratio[k] is None else f"{ratio[k]:.2f}×"]
        for k, title in _columns([a, b])
    ]
    for label, key in (("N_CTX", "n_ctx"), ("QUANT", "quantization")):
        rows.append([label, a["model_params"].get(key), b["model_params"].get(key), ""])
    output.table(["", a["model"], b["model"], f"{b['model']} ÷ {a['model']}"], rows)


def _run_one(c: Any, name: str, body: dict[str, Any]) -> dict[str, Any]:
    last: dict[str, Any] = {}
    phase = None
    for ev in c.ndjson("POST", f"/api/models/{name}/bench", body):
        last = ev
        kind = ev.get("event")
        if kind == "bench":
            where = f"{ev['model']}: " + (f"run {ev['run']}/{ev['runs']}: " if "run" in ev else "")
            if ev["phase"] == "result":
                r = ev["result"]
                load = f"load {_fmt('load_s', r['load_s'])}, " if r["load_s"] is not None else ""
                output.info(
                    f"{where}{load}first token {_fmt('ttft_s', r['ttft_s'])}, "
                    f"prompt {_fmt('prompt_tps', r['prompt_tps'])} tok/s, "
                    f"generation {_fmt('gen_tps', r['gen_tps'])} tok/s"
                )
            elif ev["phase"] in ("waiting", "loading", "unloading"):
                output.info(where + ev["phase"] + (f" ({ev['detail']})" if "detail" in ev else ""))
        elif kind == "progress" and ev.get("phase") != phase:
            phase = ev.get("phase")
            output.info(f"{ev['model']}: {phase}")
    logs = f"see `smackctl logs {name}`"
    raise_for_event(last, f"bench of {name} failed: {last.get('message')}", logs)
    if last.get("event") != "done":
        raise ModelLoadError(f"bench of {name} failed: the supervisor stopped answering", logs)
    return dict(last["result"])


def bench(
    ctx: typer.Context,
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Model names or aliases.", autocompletion=complete_model),
    ] = None,
    prompt_tokens: Annotated[
        int, typer.Option("--prompt-tokens", min=8, help="Prompt length, in tokens.")
    ] = 512,
    gen_tokens: Annotated[
        int, typer.Option("--gen-tokens", min=2, help="Tokens to generate per run.")
    ] = 128,
    runs: Annotated[int, typer.Option("--runs", min=1, max=100, help="Runs per model.")] = 3,
    cold: Annotated[
        bool,
        typer.Option("--cold", help="Unload and load the model before every run (times loads)."),
    ] = False,
    history: Annotated[
        bool,
        typer.Option("--history", help="List stored results (of NAMES, or of every model)."),
    ] = False,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare",
            help="Two models side by side (with --history: their latest stored results).",
        ),
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Measure models: load time, first token, prompt and generation tokens/s, peak memory.

    Results are stored; `--history` lists them and `--compare A B` sets two side by side.
    """
    names = names or []
    if compare and len(names) != 2:
        raise UsageError(
            "--compare takes exactly two models", "smackctl models bench --compare A B"
        )
    if not names and not history:
        raise UsageError(
            "give one or more models to bench", "smackctl models bench NAME… (or --history)"
        )
    with client(ctx, timeout=600.0) as c:
        if history:
            limit = 1 if compare else 50
            found = {
                n: c.get("/api/bench", params={"model": n, "limit": limit}) for n in names
            } or {"": c.get("/api/bench", params={"limit": limit})}
            if compare:
                for n, rows in found.items():
                    if not rows:
                        raise UsageError(
                            f"no stored bench of {n}", f"run one: `smackctl models bench {n}`"
                        )
                results = [found[n][0] for n in names]
            else:
                results = sorted(
                    (r for rows in found.values() for r in rows), key=lambda r: -r["at"]
                )
        else:
            body = {
                "prompt_tokens": prompt_tokens,
                "gen_tokens": gen_tokens,
                "runs": runs,
                "cold": cold,
            }
            results = [_run_one(c, n, body) for n in names]
    if compare:
        a, b = results
        if json_:
            output.print_json({"a": a, "b": b, "b_over_a": _ratios(a, b)})
        else:
            _show_compare(a, b)
    elif json_:
        output.print_json(results)
    elif history:
        if results:
            _show_history(results)
        else:
            output.info("no bench stored yet; run one with `smackctl models bench NAME`")
    else:
        _show_results(results)
