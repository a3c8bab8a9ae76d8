"""An interactive key's wait behind a batch key that fills a model (issue 29): SmolLM2 with
one slot (``parallel: 1``), three batch clients asking without pause (48 tokens each), and
an interactive client asking 12 times. Each interactive request's wait for its slot
(``X-Smackctl-Queued-Ms``) is divided by the batch requests' service time (their duration
less their own wait, the median); goal: the worst ≤ 1.1 (at most the one batch request that
runs when it comes, +10%). For contrast, the same interactive requests sent as batch.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from ._harness import median, model, model_file, profile_text, supervisor, verdict

ASKS = 12
BODY = {"model": "smollm2", "prompt": "Write a story about a lighthouse keeper.",
        "max_tokens": 48, "temperature": 0.0, "logit_bias": {"2": -100.0}}  # fmt: skip


def run(cache: Path) -> tuple[list[str], bool]:
    smol = model_file(cache, "smollm2")
    profile = profile_text({"smollm2": model(smol, 2048, preload=True, pinned=True, threads=2)})
    with supervisor(profile) as sup:
        sup.wait_ready("smollm2")
        with sup.client() as c:
            keys = {}
            for name, priority in (("nightly", "batch"), ("person", "interactive")):
                made = c.post("/api/keys", json={"name": name, "priority": priority})
                made.raise_for_status()
                keys[name] = made.json()["key"]
        service: list[float] = []
        stop = threading.Event()

        def batch() -> None:
            with httpx.Client(
                base_url=sup.url,
                timeout=300,
                headers={"Authorization": f"Bearer {keys['nightly']}"},
            ) as b:
                while not stop.is_set():
                    t = time.perf_counter()
                    r = b.post("/v1/completions", json=BODY)
                    took = (time.perf_counter() - t) * 1000
                    service.append(took - float(r.headers["x-smackctl-queued-ms"]))

        workers = [threading.Thread(target=batch) for _ in range(3)]
        for w in workers:
            w.start()
        waits: dict[str, list[float]] = {"interactive": [], "batch": []}
        with httpx.Client(
            base_url=sup.url, timeout=300, headers={"Authorization": f"Bearer {keys['person']}"}
        ) as p:
            for i in range(2 * ASKS):
                kind = "interactive" if i % 2 == 0 else "batch"
                extra = {"X-Smackctl-Priority": "batch"} if kind == "batch" else {}
                time.sleep(0.37)  # lands anywhere in a batch request's service, not in step
                r = p.post("/v1/completions", json=BODY, headers=extra)
                waits[kind].append(float(r.headers["x-smackctl-queued-ms"]))
        stop.set()
        for w in workers:
            w.join(300)
    per = median(service)
    worst = max(waits["interactive"]) / per
    ok = worst <= 1.1
    rows = [
        f"Batch service time (median of {len(service)}): {per:.0f} ms.",
        "",
        "| the person's requests | median wait | worst wait | worst ÷ service | goal |",
        "|---|---:|---:|---:|---|",
        f"| interactive | {median(waits['interactive']):.0f} ms | "
        f"{max(waits['interactive']):.0f} ms | {worst:.2f} | ≤ 1.1: {verdict(ok)} |",
        f"| sent as batch (contrast) | {median(waits['batch']):.0f} ms | "
        f"{max(waits['batch']):.0f} ms | {max(waits['batch']) / per:.2f} | |",
    ]
    print("\n".join(rows), flush=True)
    return rows, ok
