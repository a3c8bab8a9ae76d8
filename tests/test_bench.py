"""`smackctl models bench` on tiny generated models: it measures, stores, lists and compares."""

from __future__ import annotations

import json
import sqlite3

import llama_cpp
from typer.testing import CliRunner

from smackctl.cli.app import app

from conftest import Home

SMALL = ["--prompt-tokens", "32", "--gen-tokens", "16"]


def test_bench_measures_stores_and_lists(cli: CliRunner, home: Home) -> None:
    r = cli.invoke(app, ["models", "bench", "tiny-a", "--runs", "2", *SMALL, "--json"])
    assert r.exit_code == 0, r.stderr
    [res] = json.loads(r.stdout)
    assert res["model"] == "tiny-a" and res["was_loaded"] is False
    first, second = res["runs"]
    # the model was not loaded: the first run loads it and times the load, the second does not
    assert first["load_s"] > 0 and second["load_s"] is None
    for run in res["runs"]:
        assert run["gen_tokens"] == 16  # end-of-text is biased away: every run generates all
        assert 24 <= run["prompt_tokens"] <= 32
        assert run["ttft_s"] > 0 and run["prompt_tps"] > 0 and run["gen_tps"] > 0
        assert run["peak_rss"] > 10 * 2**20
    ttft = sorted(run["ttft_s"] for run in res["runs"])
    assert res["summary"]["ttft_s"] == {
        "median": sum(ttft) / 2,
        "min": ttft[0],
        "max": ttft[1],
        "n": 2,
    }
    assert res["summary"]["load_s"]["n"] == 1 and res["summary"]["vram"] is None
    assert res["params"] == {"prompt_tokens": 32, "gen_tokens": 16, "runs": 2, "cold": False}
    assert res["model_params"]["n_ctx"] == 4096 and res["model_params"]["quantization"] == "F32"
    assert res["llama_cpp_python"] == llama_cpp.__version__
    assert res["machine"]["cores_logical"] >= 1 and res["machine"]["ram_total"] > 0
    assert "tiny-a: run 1/2: loading" in r.stderr
    assert "tiny-a: run 2/2: first token" in r.stderr

    # loaded now: said so, and the table has no load time
    r = cli.invoke(app, ["models", "bench", "a", "--runs", "1", *SMALL])  # an alias
    assert r.exit_code == 0, r.stderr
    header, row = r.stdout.splitlines()
    assert header.split()[:4] == ["MODEL", "LOAD", "FIRST", "TOKEN"]
    assert row.split()[:2] == ["tiny-a", "-"]
    assert "tiny-a was already loaded: load time not measured" in r.stderr

    # stored in the supervisor's SQLite, with everything needed to read it later
    with sqlite3.connect(home.state / "state.db") as db:
        rows = db.execute("SELECT model, result FROM bench ORDER BY id").fetchall()
    assert [m for m, _ in rows] == ["tiny-a", "tiny-a"]
    assert json.loads(rows[0][1])["runs"] == res["runs"]

    r = cli.invoke(app, ["models", "bench", "--history", "--json"])
    assert r.exit_code == 0, r.stderr
    hist = json.loads(r.stdout)
    assert [h["id"] for h in hist] == [res["id"] + 1, res["id"]]  # newest first
    r = cli.invoke(app, ["models", "bench", "--history", "tiny-a"])
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[0].split()[:7] == ["ID", "WHEN", "MODEL", "N_CTX", "PROMPT", "GEN", "RUNS"]
    assert len(lines) == 3 and all(" tiny-a " in line for line in lines[1:])
    r = cli.invoke(app, ["models", "bench", "--history", "tiny-b"])
    assert r.exit_code == 0 and r.stdout == "" and "no bench stored yet" in r.stderr


def test_bench_cold_and_compare(cli: CliRunner) -> None:
    r = cli.invoke(app, ["models", "load", "tiny-b"])
    assert r.exit_code == 0, r.stderr
    r = cli.invoke(app, ["models", "bench", "tiny-b", "--cold", "--runs", "2", *SMALL, "--json"])
    assert r.exit_code == 0, r.stderr
    [res] = json.loads(r.stdout)
    assert res["was_loaded"] is True
    assert all(run["load_s"] > 0 for run in res["runs"])  # unloaded and loaded for each run
    assert "tiny-b: run 2/2: unloading" in r.stderr

    r = cli.invoke(app, ["models", "bench", "--compare", "--history", "tiny-b", "tiny-c"])
    assert r.exit_code == 2 and "no stored bench of tiny-c" in r.stderr

    r = cli.invoke(app, ["models", "bench", "--compare", "tiny-b", "tiny-c", "--runs", "1", *SMALL])
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["tiny-b", "tiny-c", "tiny-c", "÷", "tiny-b"]
    gen = next(line for line in lines if line.startswith("GEN TOK/S"))
    assert gen.split()[-1].endswith("×")

    r = cli.invoke(app, ["models", "bench", "--compare", "--history", "tiny-b", "tiny-c", "--json"])
    assert r.exit_code == 0, r.stderr
    both = json.loads(r.stdout)
    assert (both["a"]["model"], both["b"]["model"]) == ("tiny-b", "tiny-c")
    ratio = both["b"]["summary"]["gen_tps"]["median"] / both["a"]["summary"]["gen_tps"]["median"]
    assert both["b_over_a"]["gen_tps"] == ratio


def test_bench_bad_input_is_refused_before_anything_runs(cli: CliRunner) -> None:
    r = cli.invoke(
        app, ["models", "bench", "tiny-a", "--prompt-tokens", "4000", "--gen-tokens", "200"]
    )
    assert r.exit_code == 2
    assert "do not fit in tiny-a's context of 4096" in r.stderr and "raise n_ctx" in r.stderr
    r = cli.invoke(app, ["models", "bench", "nosuch"])
    assert r.exit_code != 0 and "unknown model 'nosuch'" in r.stderr
    r = cli.invoke(app, ["models", "bench"])
    assert r.exit_code == 2 and "give one or more models" in r.stderr
    r = cli.invoke(app, ["models", "bench", "--compare", "tiny-a"])
    assert r.exit_code == 2 and "exactly two models" in r.stderr
    r = cli.invoke(app, ["models", "ps", "--json"])
    assert json.loads(r.stdout)["models"] == []  # nothing was loaded by a refused bench
