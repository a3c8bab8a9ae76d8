"""Idle time per load and per request, as Ollama's clients set it (`keep_alive`), and `models
add` with the settings a model needs, without editing YAML (real supervisor, real runners)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import CHAT, Supervisor, smackctl, wait_for


def _model(sup: Supervisor, name: str) -> dict[str, object]:
    return sup.model(name)


def test_keep_alive_zero_unloads_after_the_answer(supervisor: Supervisor) -> None:
    with supervisor.client() as c:
        r = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-b", "keep_alive": 0})
        assert r.status_code == 200, r.text
    wait_for(lambda: _model(supervisor, "tiny-b")["state"] == "stopped", 15, "tiny-b unloaded")
    assert "unloading tiny-b: idle for more than 0s" in supervisor.log()


def test_keep_alive_minus_one_keeps_it_and_ps_says_so(supervisor: Supervisor) -> None:
    with supervisor.client() as c:
        r = c.post(
            "/v1/chat/completions",
            json={**CHAT, "model": "tiny-a"},
            headers={"X-Smackctl-Keep-Alive": "-1"},
        )
        assert r.status_code == 200, r.text
        bad = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a", "keep_alive": "x"})
        assert bad.status_code == 400
        assert "not a keep_alive" in bad.json()["error"]["message"]
    m = _model(supervisor, "tiny-a")
    assert m["keep_alive"] == -1 and m["ttl_left"] is None
    ps = smackctl(supervisor.home, "models", "ps")
    assert "kept (keep_alive)" in ps.stdout, ps.stdout
    # the next request's keep_alive wins, Ollama's way
    with supervisor.client() as c:
        c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a", "keep_alive": "5m"})
    m = _model(supervisor, "tiny-a")
    assert m["keep_alive"] == 300 and 0 < float(m["ttl_left"]) <= 300  # type: ignore[arg-type]


def test_a_load_with_its_own_ttl(supervisor: Supervisor) -> None:
    bad = smackctl(supervisor.home, "models", "load", "tiny-c", "--ttl", "xyz")
    assert bad.returncode == 2 and "--ttl xyz: not an idle time" in bad.stderr  # the flag's
    # 3 s: long enough to read back before it passes (the CLI's own start takes a part)
    r = smackctl(supervisor.home, "models", "load", "tiny-c", "--ttl", "3")
    assert r.returncode == 0, r.stderr
    assert _model(supervisor, "tiny-c")["keep_alive"] == 3
    wait_for(lambda: _model(supervisor, "tiny-c")["state"] == "stopped", 30, "the ttl to unload it")
    # a new load starts from the profile's ttl again
    assert smackctl(supervisor.home, "models", "load", "tiny-c").returncode == 0
    assert _model(supervisor, "tiny-c")["keep_alive"] is None


def test_models_add_takes_what_a_model_needs(supervisor: Supervisor, model_dir: Path) -> None:
    r = smackctl(
        supervisor.home, "models", "add", str(model_dir / "tiny-q8.gguf"), "--name", "mine",
        "--ttl", "2m", "--alias", "m1", "--alias", "m2", "--chat-format", "chatml",
        "--backend", "llama-server", "--n-ctx", "512",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    shown = json.loads(smackctl(supervisor.home, "models", "show", "mine", "--json").stdout)
    assert shown["ttl"] == 120 and shown["aliases"] == ["m1", "m2"]
    assert "replaced" not in r.stderr
    again = smackctl(supervisor.home, "models", "add", str(model_dir / "tiny-q8.gguf"),
                     "--name", "mine", "--ttl", "2m", "--n-ctx", "512", "--chat-format",
                     "chatml", "--backend", "llama-server")  # fmt: skip
    assert again.returncode == 0, again.stderr  # the same name again: said, and what is lost
    assert "replaced the model mine added before" in again.stderr
    assert "aliases m1,m2 (give them again to keep them)" in again.stderr
    r = smackctl(supervisor.home, "models", "add", str(model_dir / "tiny-q8.gguf"), "--name",
                 "mine", "--ttl", "2m", "--alias", "m1", "--alias", "m2", "--chat-format",
                 "chatml", "--backend", "llama-server", "--n-ctx", "512")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert shown["backend"] == "llama-server" and shown["n_ctx"] == 512
    with supervisor.client() as c:  # by an alias, through the chat format given
        r = c.post("/v1/chat/completions", json={**CHAT, "model": "m2"})
        assert r.status_code == 200, r.text
    bad = smackctl(supervisor.home, "models", "add", str(model_dir / "tiny-q4.gguf"),
                   "--name", "other", "--backend", "nope")  # fmt: skip
    assert bad.returncode == 2
    assert "model other: backend" in bad.stderr and "Traceback" not in bad.stderr
