"""The routes beside chat, on real runners of both local backends: token counting (Anthropic's
``/v1/messages/count_tokens``, ``/tokenize``), reranking (``/v1/rerank``) and fill-in-the-middle
(``/infill``, ``/v1/completions`` with ``suffix``). Where a backend lacks one the answer is a
400 naming the fix, before any load.

Models: the real SmolLM2 on each backend (counting against what a chat request's own usage
says), tiny random-weight ones with fill-in-the-middle tokens (``fim=True``) and a tiny
reranker of Qwen3-Reranker's shape (``rerank=True``); greedy decoding makes the tiny models'
gibberish the same for the same prompt tokens on both backends (one llama.cpp).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest

from conftest import Supervisor, launch_on, shutdown
from tinygguf import write_tiny_gguf

TOOLS_TEMPLATE = (
    "{% if tools %}tools: {{ tools | tojson }}\n{% endif %}"
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
PREFIX, SUFFIX = "def add(a, b):\n    ", "\n    return total\n"


@pytest.fixture(scope="module")
def sup(tmp_path_factory: pytest.TempPathFactory, smollm2_file: Path) -> Iterator[Supervisor]:
    d = tmp_path_factory.mktemp("extras")
    fim = write_tiny_gguf(d / "tiny-fim.gguf", name="tiny-fim", fim=True, seed=11)
    rr = write_tiny_gguf(d / "tiny-rr.gguf", name="tiny-rr", rerank=True, chat_template=None)
    plain = write_tiny_gguf(d / "tiny-plain.gguf", name="tiny-plain", seed=12)
    tools = write_tiny_gguf(d / "tiny-tools.gguf", name="tiny-tools", chat_template=TOOLS_TEMPLATE)
    ls, py = "    backend: llama-server\n", "    backend: llama-cpp-python\n"
    s = launch_on(
        d,
        "x",
        "name: x\nmodels:\n"
        f"  smol-ls:\n    path: {smollm2_file}\n    n_ctx: 2048\n{ls}"
        f"  smol-py:\n    path: {smollm2_file}\n    n_ctx: 2048\n{py}"
        f"  fim-ls:\n    path: {fim}\n    n_ctx: 512\n{ls}"
        f"  fim-py:\n    path: {fim}\n    n_ctx: 512\n{py}"
        f"  plain:\n    path: {plain}\n    n_ctx: 512\n{py}"
        f"  rr-ls:\n    path: {rr}\n    n_ctx: 512\n{ls}    args: {{reranking: true}}\n"
        f"  rr-py:\n    path: {rr}\n    n_ctx: 512\n{py}"
        f"  tools-ls:\n    path: {tools}\n    n_ctx: 1024\n{ls}"
        f"  plain-ls:\n    path: {plain}\n    n_ctx: 512\n{ls}",
    )
    yield s
    shutdown(s)


def _post(sup: Supervisor, path: str, **body: object) -> httpx.Response:
    with sup.client(timeout=120) as c:
        return c.post(path, json=body)


def _loaded(sup: Supervisor) -> set[str]:
    return {m["name"] for m in sup.status()["models"] if m["state"] != "unloaded"}


@pytest.mark.parametrize("model", ["smol-ls", "smol-py"])
def test_anthropic_count_tokens_is_what_the_request_then_costs(sup: Supervisor, model: str) -> None:
    client = anthropic.Anthropic(base_url=sup.url, api_key=sup.token, max_retries=0)
    ask = {
        "model": model,
        "system": "You are terse.",
        "messages": [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": [{"type": "text", "text": "And another one?"}]},
        ],
    }
    counted = client.messages.count_tokens(**ask)  # type: ignore[arg-type]
    answered = client.messages.create(max_tokens=1, **ask)  # type: ignore[arg-type]
    # the prompt the model saw, token for token: the template, the system prompt, every turn
    assert counted.input_tokens == answered.usage.input_tokens
    longer = client.messages.count_tokens(
        model=model, messages=[{"role": "user", "content": "Name a colour. " * 20}]
    )
    assert longer.input_tokens > counted.input_tokens
    with pytest.raises(anthropic.NotFoundError) as err:  # Anthropic's shape for its errors
        client.messages.count_tokens(model="nope", messages=[{"role": "user", "content": "x"}])
    assert "unknown model" in str(err.value)


def test_tokenize_gives_the_same_tokens_on_both_backends(sup: Supervisor) -> None:
    text = "Hello, world: <fim_prefix> is one token here"
    on_ls = _post(sup, "/tokenize", model="fim-ls", content=text)
    on_py = _post(sup, "/tokenize", model="fim-py", content=text)
    assert on_ls.status_code == on_py.status_code == 200, (on_ls.text, on_py.text)
    tokens = on_ls.json()["tokens"]
    assert tokens == on_py.json()["tokens"]
    assert 259 in tokens  # the FIM token, parsed as the special token it is
    bad = _post(sup, "/tokenize", model="fim-py", content=3)
    assert bad.status_code == 400 and "content" in bad.json()["error"]["message"]


def test_suffix_fills_in_the_middle_on_both_backends(sup: Supervisor) -> None:
    native = _post(
        sup, "/infill", model="fim-ls", input_prefix=PREFIX, input_suffix=SUFFIX,
        n_predict=12, temperature=0,
    )  # fmt: skip
    assert native.status_code == 200, native.text
    expected = native.json()["content"]
    assert expected
    for model in ("fim-ls", "fim-py"):
        r = _post(
            sup, "/v1/completions", model=model, prompt=PREFIX, suffix=SUFFIX,
            max_tokens=12, temperature=0, repeat_penalty=1.0,  # llama-cpp-python's is 1.1
        )  # fmt: skip
        assert r.status_code == 200, r.text
        got = r.json()
        # the prefix-suffix-middle prompt llama-server's /infill builds, to the token: the
        # same greedy answer from the same llama.cpp
        assert got["choices"][0]["text"] == expected, model
        assert got["usage"]["prompt_tokens"] == native.json()["tokens_evaluated"]
    plain = _post(
        sup, "/v1/completions", model="fim-py", prompt=PREFIX, max_tokens=12, temperature=0
    )
    assert plain.json()["choices"][0]["text"] != expected  # without `suffix`: a plain completion


def test_fill_in_the_middle_where_it_cannot_be_is_a_400_that_names_the_fix(
    sup: Supervisor,
) -> None:
    before = _loaded(sup)
    r = _post(sup, "/v1/completions", model="plain", prompt="x", suffix="y")
    assert r.status_code == 400
    msg = r.json()["error"]["message"]
    assert "no fill-in-the-middle tokens" in msg and "Qwen2.5-Coder" in msg
    r = _post(sup, "/infill", model="fim-py", input_prefix="a", input_suffix="b")
    assert r.status_code == 400
    assert "`POST /v1/completions` with `prompt` and `suffix`" in r.json()["error"]["message"]
    r = _post(sup, "/v1/completions", model="fim-py", prompt=["a", "b"], suffix="c")
    assert r.status_code == 400 and "one prompt" in r.json()["error"]["message"]
    assert _loaded(sup) <= before | {"fim-py"}  # refused before any load


def test_rerank_orders_documents_on_llama_server(sup: Supervisor) -> None:
    docs = ["a cat is a small animal", "the stock market fell", "cats purr", "rain"]
    r = _post(sup, "/v1/rerank", model="rr-ls", query="what is a cat?", documents=docs)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert sorted(x["index"] for x in results) == [0, 1, 2, 3]
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1
    top = _post(sup, "/v1/rerank", model="rr-ls", query="what is a cat?", documents=docs, top_n=2)
    assert [x["index"] for x in top.json()["results"]] == [x["index"] for x in results[:2]]


def test_rerank_where_it_cannot_be_is_a_400_that_names_the_fix(sup: Supervisor) -> None:
    r = _post(sup, "/v1/rerank", model="rr-py", query="q", documents=["d"])
    assert r.status_code == 400
    assert "`backend: llama-server` and `args: {reranking: true}`" in r.json()["error"]["message"]
    r = _post(sup, "/v1/rerank", model="smol-ls", query="q", documents=["d"])
    assert r.status_code == 400
    assert "set `args: {reranking: true}` for smol-ls" in r.json()["error"]["message"]
    r = _post(sup, "/v1/rerank", model="rr-ls", query="q", documents=[])
    assert r.status_code == 400 and "documents" in r.json()["error"]["message"]


def test_tools_reach_a_tool_aware_template_on_llama_server(sup: Supervisor) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    ask = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
    without = _post(sup, "/v1/chat/completions", model="tools-ls", **ask)
    with_tools = _post(sup, "/v1/chat/completions", model="tools-ls", tools=[tool], **ask)
    assert without.status_code == with_tools.status_code == 200, with_tools.text
    grew = with_tools.json()["usage"]["prompt_tokens"] - without.json()["usage"]["prompt_tokens"]
    # a byte vocabulary: the tool's JSON, rendered by the template, a token a byte at least
    assert grew >= len('"get_weather""The weather in a city"')
    refused = _post(sup, "/v1/chat/completions", model="plain-ls", tools=[tool], **ask)
    assert refused.status_code == 400
    assert "does not handle `tools`" in refused.json()["error"]["message"]
