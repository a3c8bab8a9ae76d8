"""How long the command line takes (issue 6, line 5), each against ``python -c pass``.

``smackctl --help``, ``smackctl status`` (a running supervisor, SmolLM2 loaded) and a bash
completion of a model name (``_SMACKCTL_COMPLETE=complete_bash``), through the installed
console script, 15 runs each, round-robin; medians. Goals on this machine: help and
completion ≤ 150 ms, status ≤ 250 ms, wall time of the whole command.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from ._harness import median, model, model_file, profile_text, supervisor, verdict

RUNS = 15
GOALS = {"--help": 150.0, "status": 250.0, "completion": 150.0}


def run(cache: Path) -> tuple[list[str], bool]:
    smol = model_file(cache, "smollm2")
    exe = str(Path(sys.executable).parent / "smackctl")
    with supervisor(profile_text({"smollm2": model(smol, 2048, preload=True)})) as sup:
        sup.wait_ready("smollm2")
        # a user's Python writes bytecode caches; this sandbox sets PYTHONDONTWRITEBYTECODE,
        # which would make every run compile smackctl's modules again
        env = {
            **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
            "SMACKCTL_HOME": str(sup.home),
            "SMACKCTL_PROFILE_DIR": str(sup.profiles),
            "SMACKCTL_URL": sup.url,
        }
        commands = {
            "python -c pass": ([sys.executable, "-c", "pass"], {}),
            "--help": ([exe, "--help"], {}),
            "status": ([exe, "status"], {}),
            "completion": (
                [exe],
                {
                    "_SMACKCTL_COMPLETE": "complete_bash",
                    "COMP_WORDS": "smackctl models show smo",
                    "COMP_CWORD": "3",
                },
            ),
        }
        ms: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(RUNS + 1):  # the first round warms the page cache
            for name, (argv, extra) in commands.items():
                t = time.perf_counter()
                r = subprocess.run(argv, env={**env, **extra}, capture_output=True, text=True)
                ms[name].append((time.perf_counter() - t) * 1000)
                if r.returncode != 0:
                    raise RuntimeError(f"{argv} failed: {r.stderr}")
                if name == "completion" and "smollm2" not in r.stdout:
                    raise RuntimeError(f"completion did not offer smollm2: {r.stdout!r}")
    base = median(ms["python -c pass"][1:])
    rows = [
        "| command | median | minus `python -c pass` | goal | |",
        "|---|---:|---:|---:|---|",
        f"| `python -c pass` | {base:.0f} ms | | | |",
    ]
    ok = True
    for name, goal in GOALS.items():
        got = median(ms[name][1:])
        ok &= got <= goal
        label = f"smackctl {name}" if name != "completion" else "completion of a model name"
        rows.append(
            f"| `{label}` | {got:.0f} ms | {got - base:.0f} ms | ≤ {goal:.0f} ms "
            f"| {verdict(got <= goal)} |"
        )
    print("\n".join(rows), flush=True)
    return rows, ok
