"""``python -m benchmarks [NAME…]``: run smackctl's benchmarks and write BENCHMARKS.md."""

from __future__ import annotations

import datetime
import platform
import sys
from pathlib import Path

import llama_cpp

from smackctl.hardware import probe_machine

from . import estimate_accuracy

ROOT = Path(__file__).resolve().parents[1]
SUITES = {"estimate": ("Memory estimate accuracy (issue 3)", estimate_accuracy.run)}


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
    all_ok = True
    for name in names:
        title, fn = SUITES[name]
        print(f"== {title}", flush=True)
        rows, ok = fn(cache)
        all_ok &= ok
        out += [f"## {title}", "", *rows, ""]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(out))
    print(f"wrote {ROOT / 'BENCHMARKS.md'}")
    return 0 if all_ok else 1


sys.exit(main(sys.argv[1:]))
