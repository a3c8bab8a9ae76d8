"""What a model can do, read from its GGUF file and its profile entry: shown by `models list`
and `models show`, and used to refuse a request a model cannot serve with a 400 that names a
model that can, before anything is loaded."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import Home, launch, runner_pids, shutdown, smackctl
from tinygguf import write_tiny_gguf

TOOLS = (
    "{% if tools %}{{ tools | tojson }}{% endif %}"
    "{% for m in messages %}{{ m['content'] }}{% endfor %}"
)


def test_capabilities_are_shown_and_a_request_goes_to_a_model_that_can(
    home: Home, model_dir: Path, tmp_path: Path
) -> None:
    emb = write_tiny_gguf(tmp_path / "emb.gguf", name="emb", embedding=True, chat_template=None)
    fim = write_tiny_gguf(tmp_path / "fim.gguf", name="fim", fim=True)
    tools = write_tiny_gguf(tmp_path / "tools.gguf", name="tools", chat_template=TOOLS)
    (home.root / "profiles" / "test.yaml").write_text(
        "name: test\nmodels:\n"
        f"  chat:\n    path: {model_dir / 'tiny-a.gguf'}\n    n_ctx: 1024\n"
        f"  base:\n    path: {model_dir / 'tiny-base.gguf'}\n    n_ctx: 1024\n"
        f"  emb:\n    path: {emb}\n    n_ctx: 512\n    args: {{embedding: true}}\n"
        f"  fim:\n    path: {fim}\n    n_ctx: 512\n"
        f"  tools:\n    path: {tools}\n    n_ctx: 512\n    backend: llama-server\n"
        f"  later:\n    source: https://example.invalid/later.gguf\n"
    )
    sup = launch(home)
    try:
        listed = json.loads(smackctl(home, "models", "list", "--json").stdout)
        caps = {m["name"]: m["capabilities"] for m in listed}
        assert caps["chat"]["chat"] and not caps["chat"]["tools"] and not caps["chat"]["embeddings"]
        assert not caps["base"]["chat"] and caps["base"]["context_trained"] == 4096
        assert caps["emb"]["embeddings"] and caps["emb"]["embedding_model"]
        assert caps["emb"]["pooling"] == "mean"
        assert caps["fim"]["fill_in_the_middle"] and not caps["chat"]["fill_in_the_middle"]
        assert caps["tools"]["tools"]  # llama-server, a template that reads `tools`
        assert caps["later"]["architecture"] is None  # not on disk: the profile is all we know
        table = smackctl(home, "models", "list").stdout
        row = {line.split()[0]: line for line in table.splitlines()[1:]}
        assert row["base"].rstrip().endswith("completion") and "chat, fim" in row["fim"]
        assert row["later"].split()[-1] == "?"  # not read yet: not said to be a base model
        shown = smackctl(home, "models", "show", "emb").stdout
        assert "trained for embeddings  yes (mean pooling)" in shown
        with sup.client() as c:
            r = c.post(
                "/v1/chat/completions",
                json={"model": "base", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert r.status_code == 400, r.text
            assert "(chat, fim, tools can)" in r.json()["error"]["message"]
            r = c.post("/v1/embeddings", json={"model": "chat", "input": "hi"})
            assert r.status_code == 400 and "(emb can)" in r.json()["error"]["message"]
            tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
            r = c.post(
                "/v1/chat/completions",
                json={
                    "model": "chat",
                    "messages": [{"role": "user", "content": "hi"}],
                    "tools": [tool],
                },
            )
            assert r.status_code == 400 and "(tools can)" in r.json()["error"]["message"]
        assert runner_pids(home.root) == []  # refused before any load
    finally:
        shutdown(sup)
