"""How ``state-COMMIT.db`` and ``state-COMMIT.usage.json`` were made: by the store of a
commit, on rows dated from 2026-09-01 over 91 days, with its own ``usage(0)`` saved as what any
later smackctl must still read from that file. 8880d60: schema 0 (before per-day totals);
35da309: schema 1 (per-day totals; its reopening rolled the rows over 30 days old into them).

    git -C REPO archive COMMIT src | tar -x -C /tmp/old
    python tests/data/make_state.py COMMIT /tmp/old/src
"""

from __future__ import annotations

import json
import random
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).parent
START = 1788220800.0  # 2026-09-01T00:00:00Z


def main(commit: str, old_src: str) -> None:
    sys.path.insert(0, old_src)
    import smackctl.daemon.store as old

    db = HERE / f"state-{commit}.db"
    db.unlink(missing_ok=True)
    clock = [0.0]
    old.time = types.SimpleNamespace(  # type: ignore[attr-defined]
        time=lambda: clock[0], strftime=time.strftime, monotonic=time.monotonic
    )
    s = old.Store(db)
    rnd = random.Random(8880)
    for i in range(420):
        clock[0] = START + i * (91 * 86400 / 420) + rnd.random() * 3000
        model = rnd.choice(["smollm2", "gemma3", "remote-gpt"])
        status = rnd.choice([200] * 8 + [429, 502])
        tokens_in = None if status >= 400 else rnd.randint(5, 900)
        tokens_out = None if status >= 400 or rnd.random() < 0.1 else rnd.randint(1, 400)
        latency = None if rnd.random() < 0.05 else float(rnd.randint(20, 4000))
        route = rnd.choice(["/v1/chat/completions", "/v1/messages"])
        s.log_request(model, route, status, tokens_in, tokens_out, latency, f"req-{i}")
    s.set("active_profile_path", "/home/ann/.config/smackctl/profiles/work.yaml")
    s.add_model("extra", {"path": "/models/extra.gguf", "n_ctx": 4096})
    s.save_measurement("smollm2", "k1", 250_000_000, None)
    s.save_bench("smollm2", {"at": START, "tokens_per_s": 42.0})
    s.close()
    s = old.Store(db)
    (HERE / f"state-{commit}.usage.json").write_text(json.dumps(s.usage(0), indent=1) + "\n")
    s.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
