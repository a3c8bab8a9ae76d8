"""``python -m benchmarks [NAME…]``: run smackctl's benchmarks and write BENCHMARKS.md.

Names: estimate, switch, overhead, cold_swap, cli, rss, concurrency, hundred, backends, soak,
gateway, plugins, cache, route, hostile, keys, priority, ui, fleet, kv_cache (all by
default). A suite not run keeps its section of BENCHMARKS.md as it was. Exit 1 when a figure
misses its goal.
"""

from __future__ import annotations

import datetime
import platform
import sys
from pathlib import Path

import llama_cpp

from smackctl.hardware import probe_machine

from . import (
    backends,
    cache,
    cli_latency,
    cold_swap,
    concurrency,
    estimate_accuracy,
    fleet,
    gateway,
    hostile,
    hundred,
    keys,
    kv_cache,
    overhead,
    plugins,
    priority,
    route,
    soak,
    supervisor_rss,
    switch_time,
    ui,
)

ROOT = Path(__file__).resolve().parents[1]
SUITES = {
    "estimate": ("Memory estimate accuracy (issue 3)", estimate_accuracy.run),
    "switch": ("Profile switch time (issue 4)", switch_time.run),
    "overhead": ("Supervisor overhead: streaming and added latency (issue 6)", overhead.run),
    "cold_swap": ("Cold start and model swap (issue 6)", cold_swap.run),
    "cli": ("Command-line latency (issue 6)", cli_latency.run),
    "rss": ("Supervisor memory (issue 6)", supervisor_rss.run),
    "concurrency": ("32 concurrent clients over two models (issue 6)", concurrency.run),
    "hundred": ("A hundred users at once on the shipped settings (issue 26)", hundred.run),
    "backends": ("The llama-server backend against llama-server by hand (issue 17)", backends.run),
    "soak": ("A 10-minute soak with faults (issue 16)", soak.run),
    "gateway": ("In front of a server elsewhere: added latency, fallback (issue 18)", gateway.run),
    "plugins": ("What the plugin layer costs (issue 20)", plugins.run),
    "cache": ("A response cache hit (issue 19)", cache.run),
    "route": ("`model: auto` on a labelled set of prompts (issue 19)", route.run),
    "hostile": ("The worst inputs and the event loop's lag (issue 26)", hostile.run),
    "keys": ("What a key costs on the hot path (issue 29)", keys.run),
    "priority": ("An interactive key behind a batch key (issue 29)", priority.run),
    "ui": ("The page: its load and its live lag (issue 30)", ui.run),
    "fleet": ("A fleet over NATS: added latency, streaming, spread (issue 31)", fleet.run),
    "kv_cache": ("Conversations that survive swaps (issue 32)", kv_cache.run),
}


def main(argv: list[str]) -> int:
    names = argv or list(SUITES)
    cache = ROOT / ".cache" / "models"
    cache.mkdir(parents=True, exist_ok=True)
    m = probe_machine()
    out = [
        "# Benchmarks",
        "",
        f"Measured {datetime.date.today()} on {platform.machine()}, "
        f"{m.cores_physical} physical cores, {m.ram_total / 2**30:.0f} GiB RAM, "
        f"{len(m.gpus)} GPU(s); Python {platform.python_version()}, "
        f"llama-cpp-python {llama_cpp.__version__}. Regenerate with `make bench`.",
        "",
    ]
    path = ROOT / "BENCHMARKS.md"
    sections: dict[str, list[str]] = {}  # sections of suites not run this time are kept
    if path.exists():
        current = None
        for line in path.read_text().splitlines():
            if line.startswith("## "):
                current = line[3:]
                sections[current] = []
            elif current is not None:
                sections[current].append(line)
    all_ok = True
    for name in names:
        title, fn = SUITES[name]
        print(f"== {title}", flush=True)
        rows, ok = fn(cache)
        all_ok &= ok
        sections[title] = ["", *rows, ""]
    for title, body in sections.items():
        out += [f"## {title}", *body, *([""] if body and body[-1] else [])]
    path.write_text("\n".join(out).rstrip() + "\n")
    print(f"wrote {path}")
    return 0 if all_ok else 1


sys.exit(main(sys.argv[1:]))
