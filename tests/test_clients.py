"""The official clients as they are, against real runners of each local backend, on the real
SmolLM2 (an instruct model with a chat template; its output differs between builds, so each
answer is checked for its shape, its usage and its schema, never a word of it).

``smol-ls`` runs on llama-server (which serves /v1/messages itself: the proxy passes it on)
and ``smol-py`` on llama-cpp-python (which speaks chat only: the proxy translates,
translate.py). /v1/responses is translated for both: llama-server's own Responses stream has
no `content_index` in its text deltas, and the official client's stream helper fails on it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from pydantic import BaseModel

from conftest import Supervisor, launch_on, shutdown, wait_for

BACKENDS = ["smol-ls", "smol-py"]  # llama-server, llama-cpp-python


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory, smollm2_file: Path) -> Iterator[Supervisor]:
    sup = launch_on(
        tmp_path_factory.mktemp("clients"),
        "ls",
        "name: ls\nmodels:\n"
        f"  smol-ls:\n    path: {smollm2_file}\n    n_ctx: 2048\n    backend: llama-server\n"
        f"  smol-py:\n    path: {smollm2_file}\n    n_ctx: 2048\n"
        "    backend: llama-cpp-python\n"
        f"  smol-fc:\n    path: {smollm2_file}\n    n_ctx: 2048\n"
        "    backend: llama-cpp-python\n    chat_format: chatml-function-calling\n",
    )
    yield sup
    shutdown(sup)


def _oai(sup: Supervisor) -> openai.OpenAI:
    return openai.OpenAI(base_url=sup.url + "/v1", api_key=sup.token, max_retries=0)


def _claude(sup: Supervisor) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sup.url, api_key=sup.token, max_retries=0)


@pytest.mark.parametrize("model", BACKENDS)
def test_openai_responses_create_and_stream(both: Supervisor, model: str) -> None:
    client = _oai(both)
    r = client.responses.create(
        model=model, input="Say hi.", instructions="Be brief.", max_output_tokens=8
    )
    assert r.object == "response" and r.model == model
    assert isinstance(r.output_text, str) and r.output[0].type == "message"
    assert r.usage is not None and 1 <= r.usage.output_tokens <= 8 and r.usage.input_tokens > 0
    # message input, streamed
    types, text = [], []
    with client.responses.stream(
        model=model,
        input=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_output_tokens=8,
    ) as stream:
        for event in stream:
            types.append(event.type)
            if event.type == "response.output_text.delta":
                text.append(event.delta)
        final = stream.get_final_response()
    assert types[0] == "response.created" and "response.output_text.delta" in types
    assert types[-1] in ("response.completed", "response.incomplete")
    assert final.output_text == "".join(text)
    assert final.usage is not None and final.usage.output_tokens >= 1


@pytest.mark.parametrize("model", BACKENDS)
def test_anthropic_messages_create_and_stream(both: Supervisor, model: str) -> None:
    client = _claude(both)
    m = client.messages.create(
        model=model,
        max_tokens=8,
        system="Be brief.",
        messages=[{"role": "user", "content": [{"type": "text", "text": "Say hi."}]}],
    )
    assert m.type == "message" and m.role == "assistant"
    assert m.content and m.content[0].type == "text"
    assert m.stop_reason in ("end_turn", "max_tokens")
    assert 1 <= m.usage.output_tokens <= 8
    with client.messages.stream(
        model=model, max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == streamed
    assert final.usage.output_tokens >= 1


@pytest.mark.parametrize("model", BACKENDS)
def test_anthropic_errors_come_in_anthropic_shape(both: Supervisor, model: str) -> None:
    client = _claude(both)
    with pytest.raises(anthropic.NotFoundError) as err:
        client.messages.create(
            model="nope", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert "unknown model" in str(err.value)
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(
            model=model, max_tokens=0, messages=[{"role": "user", "content": "x"}]
        )


class Answer(BaseModel):
    ok: bool
    count: int


@pytest.mark.parametrize("model", BACKENDS)
def test_structured_output_parses_with_the_sdk(both: Supervisor, model: str) -> None:
    done = _oai(both).chat.completions.parse(
        model=model,
        messages=[{"role": "user", "content": "Answer in JSON."}],
        response_format=Answer,
        max_tokens=60,
        temperature=0,
    )
    parsed = done.choices[0].message.parsed
    assert isinstance(parsed, Answer)  # the schema held (grammar-constrained)


@pytest.mark.parametrize("model", BACKENDS)
def test_every_field_of_the_table_answers_200_or_a_4xx_that_names_it(
    both: Supervisor, model: str
) -> None:
    base = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    ok_rows = [
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object"}},
            }
        },
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
        {
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": "hi"},
            ]
        },
        {
            "parallel_tool_calls": False,
            "store": False,
            "metadata": {"a": "b"},
            "reasoning_effort": "low",
        },
        {
            "seed": 1,
            "n": 1,
            "user": "me",
            "stream_options": {"include_usage": True},
            "stream": True,
        },
        {"response_format": {"type": "json_object"}},
    ]
    with httpx.Client(
        base_url=both.url, headers={"Authorization": f"Bearer {both.token}"}, timeout=60
    ) as c:
        for extra in ok_rows:
            r = c.post("/v1/chat/completions", json={**base, **extra})
            assert r.status_code == 200, (extra, r.text)
        # max_completion_tokens is honoured (llama-cpp-python reads only max_tokens)
        body = {**base, "max_tokens": None, "max_completion_tokens": 3}
        r = c.post("/v1/chat/completions", json={k: v for k, v in body.items() if v is not None})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3
        image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
        r = c.post(
            "/v1/chat/completions",
            json={**base, "messages": [{"role": "user", "content": [image]}]},
        )
        assert r.status_code == 400 and "reads text only" in r.json()["error"]["message"]
        r = c.post("/v1/chat/completions", json={**base, "modalities": ["text", "audio"]})
        assert r.status_code == 400 and "text only" in r.json()["error"]["message"]
        r = c.post("/v1/chat/completions", json={**base, "api_base": "http://evil"})
        assert r.status_code == 400  # outside the API: still refused
        # an Anthropic request's usage lands in the request log like any other's
        msg = {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]}
        r = c.post("/v1/messages", json=msg)
        assert r.status_code == 200
    # this request's line (written once the answer is sent: waited for, in another process)
    mark = f"request id={r.headers['x-request-id']} "

    def line() -> str | None:
        return next((ln for ln in both.log().splitlines() if mark in ln), None)

    wait_for(lambda: line() is not None, 10, "the request's line in the log")
    logged = line() or ""
    assert f"model={model} route=/v1/messages" in logged
    assert "tokens_out=None" not in logged and "tokens_out=0 " not in logged


WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
ASK = "What is the weather in Paris?"


def test_tools_end_to_end_in_all_three_apis(both: Supervisor) -> None:
    """SmolLM2 is a ChatML model: llama-cpp-python's `chatml-function-calling` format offers
    it the tools and parses its call. The call comes back in each API's own shape, and the
    tool's result is taken in the next turn."""
    oai = _oai(both)
    tool = {"type": "function", "function": WEATHER}
    named = {"type": "function", "function": {"name": "get_weather"}}
    first = oai.chat.completions.create(
        model="smol-fc", messages=[{"role": "user", "content": ASK}], tools=[tool],
        tool_choice=named, max_tokens=64,
    )  # fmt: skip
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert isinstance(json.loads(call.function.arguments), dict)  # type: ignore[union-attr]
    follow = oai.chat.completions.create(
        model="smol-fc",
        messages=[
            {"role": "user", "content": ASK},
            first.choices[0].message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 °C"},
        ],
        tools=[tool],
        max_tokens=16,
    )
    assert follow.choices[0].message.content is not None or follow.choices[0].message.tool_calls

    m = _claude(both).messages.create(
        model="smol-fc", max_tokens=64, messages=[{"role": "user", "content": ASK}],
        tools=[{"name": "get_weather", "description": WEATHER["description"],
                "input_schema": WEATHER["parameters"]}],
        tool_choice={"type": "tool", "name": "get_weather"},
    )  # fmt: skip
    use = next(b for b in m.content if b.type == "tool_use")
    assert use.name == "get_weather" and isinstance(use.input, dict)
    assert m.stop_reason == "tool_use"

    r = oai.responses.create(
        model="smol-fc", input=ASK, max_output_tokens=64,
        tools=[{"type": "function", **WEATHER}],
        tool_choice={"type": "function", "name": "get_weather"},
    )  # fmt: skip
    fc = next(o for o in r.output if o.type == "function_call")
    assert fc.name == "get_weather" and isinstance(json.loads(fc.arguments), dict)


def test_tools_offered_without_tool_choice_reach_the_model_and_required_is_honoured(
    both: Supervisor,
) -> None:
    """The SDKs leave `tool_choice` out: with tools offered that is `auto` (OpenAI's default),
    and the tools are in the prompt (llama-cpp-python's formats put none there without it:
    the model answered in text). `required` (Anthropic's `any`) with one tool is that tool;
    with several it is a 400 that says why (llama-cpp-python's formats cannot be made to
    call one of several: its assertion was an empty 500)."""
    oai = _oai(both)
    tool = {"type": "function", "function": WEATHER}
    ask = {"model": "smol-fc", "messages": [{"role": "user", "content": ASK}], "max_tokens": 4}
    bare = oai.chat.completions.create(**ask)  # type: ignore[call-overload]
    offered = oai.chat.completions.create(**ask, tools=[tool])  # type: ignore[call-overload]
    assert bare.usage is not None and offered.usage is not None
    # the tools changed the prompt (ignored, it was the same prompt, token for token; the
    # format's two-step `auto` counts only its last step, so not the tools' whole length)
    assert offered.usage.prompt_tokens > bare.usage.prompt_tokens
    forced = oai.chat.completions.create(
        **{**ask, "max_tokens": 64}, tools=[tool], tool_choice="required"
    )  # type: ignore[call-overload]
    assert forced.choices[0].message.tool_calls[0].function.name == "get_weather"  # type: ignore[index,union-attr]
    m = _claude(both).messages.create(
        model="smol-fc", max_tokens=64, messages=[{"role": "user", "content": ASK}],
        tools=[{"name": "get_weather", "description": WEATHER["description"],
                "input_schema": WEATHER["parameters"]}],
        tool_choice={"type": "any"},
    )  # fmt: skip
    assert m.stop_reason == "tool_use"
    # a question no tool answers, tools offered: the model may answer in text, and then the
    # text is there, within max_tokens (the format's text branch generated under a grammar
    # of tool names only: "" every time)
    for said in ("Say hello to Ann in one short sentence.", "What is two plus two?"):
        plain = oai.chat.completions.create(
            model="smol-fc", messages=[{"role": "user", "content": said}], max_tokens=12,
            temperature=0, tools=[tool],
        )  # fmt: skip
        message = plain.choices[0].message
        assert message.content or message.tool_calls, plain
        if not message.tool_calls:
            assert plain.usage is not None and 0 < plain.usage.completion_tokens <= 12
    streamed = oai.chat.completions.create(
        model="smol-fc", messages=[{"role": "user", "content": "What is two plus two?"}],
        max_tokens=12, temperature=0, tools=[tool], stream=True,
    )  # fmt: skip
    deltas = [c.choices[0].delta for c in streamed if c.choices]
    assert "".join(d.content or "" for d in deltas) or any(d.tool_calls for d in deltas)
    other = {"type": "function", "function": {**WEATHER, "name": "get_time"}}
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(**ask, tools=[tool, other], tool_choice="required")  # type: ignore[call-overload]
    assert "tool_choice `required` with several tools" in str(err.value)


@pytest.mark.parametrize("model", BACKENDS)
def test_tools_to_a_template_without_them_is_a_400_that_names_the_fix(
    both: Supervisor, model: str
) -> None:
    """SmolLM2's own template never reads `tools`: llama-server would drop them and answer in
    text (measured), llama-cpp-python the same."""
    with pytest.raises(openai.BadRequestError) as err:
        _oai(both).chat.completions.create(
            model=model, messages=[{"role": "user", "content": ASK}],
            tools=[{"type": "function", "function": WEATHER}], max_tokens=8,
        )  # fmt: skip
    assert "cannot call tools" in str(err.value) and "chatml-function-calling" in str(err.value)


def test_tool_calls_streamed_in_all_three_apis(both: Supervisor) -> None:
    """The same call, streamed: chat's tool_call deltas, Anthropic's tool_use block (its input
    as input_json_delta), the Responses API's function_call item and its argument events."""
    oai = _oai(both)
    named = {"type": "function", "function": {"name": "get_weather"}}
    stream = oai.chat.completions.create(
        model="smol-fc", messages=[{"role": "user", "content": ASK}], stream=True,
        tools=[{"type": "function", "function": WEATHER}], tool_choice=named, max_tokens=64,
    )  # fmt: skip
    names, args = set(), ""
    for chunk in stream:
        for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            names |= {tc.function.name} if tc.function and tc.function.name else set()
            args += (tc.function.arguments or "") if tc.function else ""
    assert names == {"get_weather"} and isinstance(json.loads(args), dict)

    with _claude(both).messages.stream(
        model="smol-fc", max_tokens=64, messages=[{"role": "user", "content": ASK}],
        tools=[{"name": "get_weather", "description": WEATHER["description"],
                "input_schema": WEATHER["parameters"]}],
        tool_choice={"type": "tool", "name": "get_weather"},
    ) as s:  # fmt: skip
        final = s.get_final_message()
    use = next(b for b in final.content if b.type == "tool_use")
    assert use.name == "get_weather" and isinstance(use.input, dict)
    assert final.stop_reason == "tool_use"

    with oai.responses.stream(
        model="smol-fc", input=ASK, max_output_tokens=64,
        tools=[{"type": "function", **WEATHER}],
        tool_choice={"type": "function", "name": "get_weather"},
    ) as rs:  # fmt: skip
        types = [e.type for e in rs]
        done = rs.get_final_response()
    assert "response.function_call_arguments.delta" in types
    fc = next(o for o in done.output if o.type == "function_call")
    assert fc.name == "get_weather" and isinstance(json.loads(fc.arguments), dict)
