"""The request path's pure parts with plain values: the gateway's attempt plan, the
translators, the switch plan, the request schemas and the wire (SSE frames, parsed)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic import ValidationError

from smackctl.config import Profile
from smackctl.daemon.gateway import plan
from smackctl.daemon.schemas import REQUEST_SCHEMAS
from smackctl.daemon.switch_plan import Action, plan_switch
from smackctl.daemon.translate import MESSAGES, RESPONSES, from_chat, stream_from_chat, to_chat
from smackctl.wire import DONE, SSEParser, events, sse, sse_error


def _profile(**extra: Any) -> Profile:
    models = {
        "a": {"path": "/a.gguf", "n_ctx": 1000},
        "b": {"path": "/b.gguf", "n_ctx": 4000, "fallbacks": ["far"]},
        "far": {"backend": "openai", "url": "http://far.example/v1", "context_length": 9000},
        "c": {"path": "/c.gguf", "n_ctx": 8000},
    }
    groups = {
        "rr": {"deployments": ["a", "b"], "policy": "round-robin", "fallbacks": ["c"]},
        "busy": {"deployments": ["a", "b", "c"], "policy": "least-busy", "aliases": ["lb"]},
        "fast": {"deployments": ["a", "b"], "policy": "latency"},
    }
    return Profile.model_validate({"name": "p", "models": models, "groups": groups, **extra})


# -- the gateway's attempt plan ----------------------------------------------------------------


def test_a_models_chain_is_itself_then_its_fallbacks() -> None:
    p = _profile()
    assert plan.chain(p, "a", {}, {}) == ["a"]
    assert plan.chain(p, "b", {}, {}) == ["b", "far"]
    assert plan.chain(p, "added-by-hand", {}, {}) == ["added-by-hand"]  # not in the profile


def test_group_policies_order_the_deployments() -> None:
    p = _profile()
    # a group's own fallbacks follow its deployments (not its members' fallbacks)
    assert plan.chain(p, "rr", {}, {"rr": 0}) == ["a", "b", "c"]
    assert plan.chain(p, "rr", {}, {"rr": 1}) == ["b", "a", "c"]
    busy = {"a": plan.Deployed("a", busy=3), "b": plan.Deployed("b", busy=0),
            "c": plan.Deployed("c", busy=1)}  # fmt: skip
    assert plan.chain(p, "lb", busy, {}) == ["b", "c", "a"]  # an alias of the group
    fast = {"a": plan.Deployed("a", ttfb=0.5), "b": plan.Deployed("b", ttfb=0.1)}
    assert plan.chain(p, "fast", fast, {}) == ["b", "a"]


def test_the_chain_is_cut_at_max_hops_and_never_loops() -> None:
    models = {f"m{i}": {"path": f"/{i}.gguf", "fallbacks": [f"m{i + 1}", "m0"]} for i in range(9)}
    models["m9"] = {"path": "/9.gguf"}
    p = Profile.model_validate({"name": "p", "models": models})
    assert plan.chain(p, "m0", {}, {}) == ["m0", "m1", "m2", "m3", "m4"]


def test_attempts_are_skipped_for_context_health_and_routes() -> None:
    deployed = {
        "a": plan.Deployed("a", context=100),
        "far": plan.Deployed("far", remote=True, healthy=False, health_error="503"),
        "c": plan.Deployed("c", remote=True, context=10_000),
    }
    got = plan.attempts(["a", "far", "c"], deployed, "/v1/chat/completions", 500)
    assert got[0].skip == "the prompt (~500 tokens) does not fit its context of 100"
    assert got[1].skip == "its health check fails (503)"
    assert got[2].skip is None
    tokenize = plan.attempts(["c"], deployed, "/tokenize", 5)
    assert tokenize[0].skip is not None and "llama-server's own route" in tokenize[0].skip


def test_estimated_tokens_and_the_final_status() -> None:
    body = {"messages": [{"role": "user", "content": "x" * 400}]}
    assert 100 <= plan.estimated_tokens(body) <= 120
    assert plan.final_status([504, 504]) == 504
    assert plan.final_status([502]) == 502
    assert plan.final_status([502, 504]) == 503
    assert plan.final_status([]) == 503


# -- the translators ---------------------------------------------------------------------------


def test_an_anthropic_request_as_chat_and_its_answer_back() -> None:
    body = {
        "model": "m",
        "max_tokens": 20,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "t1", "name": "calc", "input": {"x": "2+2"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "4"}]},
        ],
        "tools": [{"name": "calc", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any"},
        "stop_sequences": ["\n\n"],
        "stream": True,
    }  # fmt: skip
    chat = to_chat(MESSAGES, body)
    roles = [m["role"] for m in chat["messages"]]
    assert roles == ["system", "user", "assistant", "tool"]
    assert chat["messages"][2]["tool_calls"][0]["function"] == {
        "name": "calc", "arguments": '{"x": "2+2"}'}  # fmt: skip
    assert chat["messages"][3] == {"role": "tool", "tool_call_id": "t1", "content": "4"}
    assert chat["tool_choice"] == "required" and chat["stop"] == ["\n\n"]
    assert chat["stream_options"] == {"include_usage": True} and chat["max_tokens"] == 20
    answer = {
        "id": "x", "model": "m",
        "choices": [{"message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 1},
    }  # fmt: skip
    msg = from_chat(MESSAGES, answer, body)
    assert msg["type"] == "message" and msg["content"] == [{"type": "text", "text": "4"}]
    assert msg["stop_reason"] == "end_turn"
    assert msg["usage"]["input_tokens"] == 12 and msg["usage"]["output_tokens"] == 1


def test_a_responses_request_as_chat_and_its_answer_back() -> None:
    body = {"model": "m", "instructions": "Be brief.", "input": "Hello", "max_output_tokens": 5}
    chat = to_chat(RESPONSES, body)
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
    ]
    answer = {"id": "x", "model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 2},
              "choices": [{"message": {"content": "Hi."}, "finish_reason": "stop"}]}  # fmt: skip
    out = from_chat(RESPONSES, answer, body)
    assert out["object"] == "response" and out["status"] == "completed"
    assert out["output"][0]["content"][0]["text"] == "Hi."
    assert out["usage"]["input_tokens"] == 3 and out["usage"]["output_tokens"] == 2


def test_a_chat_stream_translated_event_by_event() -> None:
    chunks = [
        sse({"choices": [{"delta": {"content": "Hel"}}]}),
        sse({"choices": [{"delta": {"content": "lo"}, "finish_reason": "stop"}]})
        + sse({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}}),
        DONE,
    ]

    async def run(path: str) -> list[tuple[str | None, Any]]:
        async def source() -> Any:
            for c in chunks:
                yield c

        out = b"".join([c async for c in stream_from_chat(path, source(), {"model": "m"})])
        return [(ev.event, ev.json()) for ev in events(out)]

    anthropic = asyncio.run(run(MESSAGES))
    names = [n for n, _ in anthropic]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    text = "".join(d["delta"]["text"] for n, d in anthropic if n == "content_block_delta")
    assert text == "Hello"
    delta = next(d for n, d in anthropic if n == "message_delta")
    assert delta["usage"]["output_tokens"] == 2
    responses = asyncio.run(run(RESPONSES))
    done = next(d for n, d in responses if n == "response.completed")
    assert done["response"]["output"][0]["content"][0]["text"] == "Hello"
    seq = [d["sequence_number"] for _, d in responses]
    assert seq == sorted(seq) and len(set(seq)) == len(seq)


def test_a_stream_s_tokens_when_its_events_come_together() -> None:
    """A fleet member sends a fast stream's events together: Anthropic's tokens in (its
    start) and out (its delta) in one piece are both counted, the later count winning."""
    from smackctl.daemon.usage import tokens_in_stream

    start = {"type": "message_start", "message": {"usage": {"input_tokens": 4,
                                                            "output_tokens": 1}}}  # fmt: skip
    delta = {"type": "message_delta", "usage": {"output_tokens": 9}}
    piece = (
        sse(start, "message_start") + sse({"type": "ping"}, "ping") + sse(delta, "message_delta")
    )
    assert tokens_in_stream(piece) == (4, 9)
    assert tokens_in_stream(sse({"choices": [{"delta": {}}], "usage": None})) is None


# -- the switch plan ---------------------------------------------------------------------------


def test_the_switch_plan_keeps_reloads_loads_and_unloads() -> None:
    current = Profile.model_validate({"name": "old", "models": {
        "keep": {"path": "/k.gguf"}, "change": {"path": "/c.gguf", "n_ctx": 512},
        "gone": {"path": "/g.gguf"}}})  # fmt: skip
    target = Profile.model_validate({"name": "new", "models": {
        "keep": {"path": "/k.gguf"}, "change": {"path": "/c.gguf", "n_ctx": 2048},
        "pre": {"path": "/p.gguf", "preload": True}, "later": {"path": "/l.gguf"}}})  # fmt: skip
    loaded = {"keep": 100, "change": 200, "gone": 300}
    need = {"change": 400, "pre": 500}
    p = plan_switch(current, loaded, target, lambda n, s: need.get(n), 2000)
    actions = {s.model: s.action for s in p.steps}
    assert actions == {"keep": Action.KEEP, "change": Action.RELOAD, "gone": Action.UNLOAD,
                       "pre": Action.LOAD, "later": Action.ADD}  # fmt: skip
    assert p.ram_before == 600 and p.ram_after == 100 + 400 + 500 and p.fits
    tight = plan_switch(current, loaded, target, lambda n, s: need.get(n), 900)
    assert not tight.fits and "the budget is" in tight.problems[0]


# -- the request schemas -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, body, where",
    [
        ("/v1/chat/completions", {"messages": []}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "api_base": "http://elsewhere"},
            "api_base",
        ),  # fmt: skip
        ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ("/v1/embeddings", {"input": "x", "encoding_format": "hex"}, "encoding_format"),
        ("/v1/messages", {"messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ],
)
def test_the_schemas_refuse_what_the_apis_do_not_have(
    path: str, body: dict[str, Any], where: str
) -> None:
    with pytest.raises(ValidationError) as exc:
        REQUEST_SCHEMAS[path].model_validate(body)
    assert exc.value.errors()[0]["loc"][0] == where


def test_the_schemas_take_what_clients_send() -> None:
    chat = {"model": "m", "messages": [{"role": "system", "content": "s"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
            "response_format": {"type": "json_object"}, "seed": 1}  # fmt: skip
    REQUEST_SCHEMAS["/v1/chat/completions"].model_validate(chat)
    REQUEST_SCHEMAS["/v1/messages"].model_validate(
        {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    )


# -- the wire ----------------------------------------------------------------------------------


def test_sse_framed_and_parsed_whatever_the_cuts() -> None:
    stream = (
        sse({"a": 1}) + sse("two\nlines", event="note", id=7) + sse_error("bad", "t", "c") + DONE
    )
    whole = events(stream)
    assert [e.json() for e in whole[:1]] == [{"a": 1}]
    assert whole[1].data == b"two\nlines" and whole[1].event == "note" and whole[1].id == "7"
    assert json.loads(whole[2].data)["error"] == {"message": "bad", "type": "t", "code": "c"}
    assert whole[3].done and whole[3].json() is None
    for cut in range(1, len(stream)):  # cut anywhere, in two pieces: the same events
        parser = SSEParser()
        got = parser.feed(stream[:cut]) + parser.feed(stream[cut:])
        assert got == whole
    loose = b'data:{"b":2}\r\n\r\n: a comment\n\ndata: [DONE]'  # no space, CRLF, no blank end
    assert [e.json() for e in events(loose)] == [{"b": 2}, None]


def test_a_fleet_member_s_prices_are_checked_kept_fresh_and_dropped() -> None:
    """What a member says its model costs (its heartbeat): the front charges a key's budget
    with it; a price out of range or not a pair of numbers is none, and one no longer said
    is no longer charged."""
    from smackctl.daemon.fleet.members import Members
    from smackctl.daemon.fleet.protocol import Heartbeat

    m = Members("front", 2.0)
    said = {"a": {"price": [1, 2.5]}, "b": {"price": [1e7, 1]}, "c": {"price": [True, 1]},
            "d": {"price": "free"}}  # fmt: skip
    m.heard(Heartbeat("w1", "i", said), now=0.0)
    assert m.price("w1/a") == (1.0, 2.5)
    assert m.price("w1/b") is None and m.price("w1/c") is None and m.price("w1/d") is None
    m.heard(Heartbeat("w1", "i", {"a": {"price": [3, 4]}}), now=1.0)
    assert m.price("w1/a") == (3.0, 4.0)
    m.heard(Heartbeat("w1", "i", {"a": {}}), now=2.0)
    assert m.price("w1/a") is None


def test_swa_full_counts_the_whole_context_in_every_layer() -> None:
    """Gemma 3 on llama-server: 15 of its 18 layers keep a window (plus a batch) per slot;
    with ``args: {swa-full: true}`` (what a saved slot needs to be restored: llama-server
    re-reads the whole prompt of a windowed model otherwise) every layer keeps n_ctx."""
    from smackctl.config import ModelSpec
    from smackctl.estimate import estimate_for
    from smackctl.gguf import GGUFInfo

    info = GGUFInfo("g", 10**8, "gemma3", "g", None, None, 32768, 18, 640, 4, 1, 256, 256,
                    1000, True, sliding_window=512)  # fmt: skip
    windowed = ModelSpec(path="g", backend="llama-server", n_ctx=8192)
    full = ModelSpec(path="g", backend="llama-server", n_ctx=8192, args={"swa-full": True})
    per_token = 1 * (256 + 256) * 2  # one layer: a KV head of 256 + 256, f16
    assert estimate_for(info, windowed).kv_cache == per_token * (3 * 8192 + 15 * (512 + 2048))
    assert estimate_for(info, full).kv_cache == per_token * 18 * 8192


def test_json_output_reads_as_text_and_escapes_only_what_cannot_be_written(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from smackctl.cli.output import as_text, print_json

    print_json({"answer": "こんにちは"})
    assert '"answer": "こんにちは"' in capsys.readouterr().out  # not \u3053…
    print_json({"answer": "a\udcffb"})  # a lone surrogate cannot be written as text
    assert '"a\\udcffb"' in capsys.readouterr().out
    # bytes that were not UTF-8 (stdin, argv) are sent as U+FFFD, never as surrogates
    assert as_text(b"\xff ok".decode("utf-8", "surrogateescape")) == "\ufffd ok"
    assert as_text("half \ud800 pair") == "half ? pair"


def test_two_urls_of_one_supervisor_are_the_same_place() -> None:
    from smackctl.cli._lifecycle import same_place

    assert same_place("http://127.0.0.1:7622", "http://localhost:7622")
    assert same_place("http://0.0.0.0:7622", "http://127.0.0.1:7622")  # a LAN bind, from here
    assert same_place("http://[::1]:7622/", "http://127.0.0.1:7622")
    assert not same_place("http://127.0.0.1:7622", "http://127.0.0.1:9")
    assert not same_place("http://10.0.0.5:7622", "http://127.0.0.1:7622")


def test_retry_after_is_the_first_probe_when_every_breaker_is_open() -> None:
    """Every deployment passed over for an open breaker: a client is told to come back at
    the first probe (a client that retries at once only meets the open breaker again); one
    that failed its request gets the usual 1 s."""
    from smackctl.daemon.api.common import smack_error
    from smackctl.daemon.gateway import Gateway

    skipped = Gateway._none_answered("m", ["r1: its circuit breaker is open"], [], [15.6, 30.0])
    assert smack_error(skipped).headers["retry-after"] == "16"
    failed = Gateway._none_answered("m", ["r1: answered 503"], [503], [15.6])
    assert smack_error(failed).headers["retry-after"] == "1"


def test_nats_failures_in_words_without_a_python_tuple() -> None:
    from smackctl.daemon.fleet.service import _words

    refused = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 4333)")
    assert _words(refused) == "the NATS server cannot be reached (connection refused)"
    assert "(" not in _words(OSError("Connect call failed ('10.0.0.9', 4222)"))
    assert _words(TimeoutError()) == "the NATS server cannot be reached (no answer in time)"
    import socket

    typo = socket.gaierror(-2, "Name or service not known")
    assert (
        _words(typo) == "the NATS server's host name does not resolve (Name or service not known)"
    )
    missing = FileNotFoundError(2, "No such file or directory", "/etc/ca.pem")
    assert _words(missing) == "cannot read /etc/ca.pem: no such file or directory"
