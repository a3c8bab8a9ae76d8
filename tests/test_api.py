"""The supervisor's HTTP API against real runners on tiny generated models."""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import openai
import pytest

from conftest import Supervisor, launch, runner_pids, shutdown, wait_for

CHAT = {
    "model": "tiny-a",
    "messages": [{"role": "user", "content": "hello"}],
    "max_tokens": 8,
    "temperature": 0,
}


def sse_events(lines: list[str]) -> list[dict[str, object] | str]:
    out: list[dict[str, object] | str] = []
    for line in lines:
        if line.startswith("data:"):
            data = line[5:].strip()
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_openai_client_chat_stream_models_and_unknown(supervisor: Supervisor) -> None:
    oa = openai.OpenAI(base_url=supervisor.url + "/v1", api_key=supervisor.token)

    ids = {m.id for m in oa.models.list().data}
    assert ids == {
        "tiny-a",
        "tiny-b",
        "tiny-c",
        "tiny-q8",
        "tiny-q4",
        "tiny-base",
        "tiny-hostile",
        "broken",
        "alien",
    }

    reply = oa.chat.completions.create(
        model="tiny-a", messages=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=0
    )
    assert reply.choices[0].finish_reason in ("length", "stop")
    assert reply.usage is not None and reply.usage.completion_tokens > 0

    stream = oa.chat.completions.create(
        model="a",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == reply.choices[0].message.content  # greedy: same text both ways

    with pytest.raises(openai.NotFoundError) as exc:
        oa.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert "unknown model 'nope'" in str(exc.value)
    assert "tiny-a" in str(exc.value) and "fast" in str(exc.value)  # the known ones are listed


def test_completions_and_alias_routing(supervisor: Supervisor) -> None:
    with supervisor.client() as c:
        r = c.post(
            "/v1/completions",
            json={"model": "fast", "prompt": "abc", "max_tokens": 4, "temperature": 0},
        )
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] is not None
        assert r.headers["x-request-id"]
    assert supervisor.model("tiny-b")["state"] == "ready"  # the alias loaded tiny-b
    assert supervisor.model("tiny-a")["state"] == "stopped"


def test_auth_host_cors_and_health(supervisor: Supervisor) -> None:
    assert httpx.get(supervisor.url + "/health").json()["status"] == "ok"  # no token needed
    r = httpx.get(supervisor.url + "/v1/models")
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"
    r = httpx.get(supervisor.url + "/v1/models", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = httpx.get(
        supervisor.url + "/v1/models",
        headers={"Authorization": f"Bearer {supervisor.token}", "Host": "evil.example:7622"},
    )
    assert r.status_code == 403 and "DNS rebinding" in r.json()["error"]["message"]
    r = httpx.options(
        supervisor.url + "/v1/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert r.status_code == 403
    assert "access-control-allow-origin" not in r.headers
    with supervisor.client() as c:
        r = c.get("/v1/models", headers={"Origin": "https://evil.example"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (json.dumps({**CHAT, "temperature": "hot"}).encode(), 400, "`temperature`"),
        (json.dumps({**CHAT, "max_tokens": -5}).encode(), 400, "`max_tokens`"),
        (json.dumps({**CHAT, "messages": []}).encode(), 400, "`messages`"),
        (json.dumps({**CHAT, "api_base": "http://evil"}).encode(), 400, "`api_base`"),
        (json.dumps({**CHAT, "model_path": "/etc/passwd"}).encode(), 400, "`model_path`"),
        (json.dumps({**CHAT, "model": "../../etc"}).encode(), 404, "unknown model"),
        # what the fuzzer (test_fuzz.py) found the runners answered with a 500 and a dump of
        # pydantic's errors, or a crash
        (json.dumps({**CHAT, "messages": [{"role": "tool"}]}).encode(), 400, "`messages.0.tool"),
        (json.dumps({**CHAT, "logit_bias": {"": 1}}).encode(), 400, "`logit_bias"),
        (json.dumps({**CHAT, "mirostat_tau": -1}).encode(), 400, "`mirostat_tau`"),
        (json.dumps({**CHAT, "response_format": {"x": 1}}).encode(), 400, "`response_format`"),
        (json.dumps({**CHAT, "tool_choice": "sometimes"}).encode(), 400, "`tool_choice"),
    ],
)
def test_bad_requests_get_clear_errors(
    supervisor: Supervisor, body: bytes, status: int, needle: str
) -> None:
    with supervisor.client() as c:
        r = c.post(
            "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == status, r.text
        assert needle in r.json()["error"]["message"]
        # nothing was loaded for a request that never reached a runner, and it still serves
        ok = c.post("/v1/chat/completions", json=CHAT)
        assert ok.status_code == 200, ok.text


def test_body_too_large_is_413(supervisor: Supervisor) -> None:
    big = b'{"model": "tiny-a", "prompt": "' + b"x" * (17 * 1024 * 1024) + b'"}'
    with supervisor.client() as c:
        r = c.post("/v1/completions", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert "over the limit" in r.json()["error"]["message"]
    assert supervisor.proc.poll() is None


def test_concurrent_requests_for_unloaded_model_cause_one_load(supervisor: Supervisor) -> None:
    def ask(_: int) -> int:
        with supervisor.client() as c:
            return c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-c"}).status_code

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(ask, range(20)))
    assert codes == [200] * 20
    assert len(runner_pids(supervisor.home.root)) == 1  # one runner process exists
    starts = (supervisor.home.state / "logs" / "runner-tiny-c.log").read_text().count("starting:")
    assert starts == 1
    assert supervisor.model("tiny-c")["requests_served"] == 20


def test_two_concurrent_streams_to_one_model_both_complete(supervisor: Supervisor) -> None:
    body = {**CHAT, "max_tokens": 300, "stream": True}

    def stream(_: int) -> list[dict[str, object] | str]:
        with supervisor.client() as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            return sse_events(list(r.iter_lines()))

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        a, b = pool.map(stream, range(2))
    for events in (a, b):
        assert events[-1] == "[DONE]"
        last = events[-2]
        assert isinstance(last, dict)
        assert last["choices"][0]["finish_reason"] in ("length", "stop")  # type: ignore[index]
    assert len(a) == len(b)  # same greedy answer, neither truncated by the other


def test_unknown_route_and_method(supervisor: Supervisor) -> None:
    with supervisor.client() as c:
        assert c.get("/v1/nothing").status_code == 404
        assert c.get("/v1/chat/completions").status_code == 405


def test_non_loopback_without_auth_is_refused(home: object) -> None:
    import subprocess
    import sys

    from conftest import Home

    assert isinstance(home, Home)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "smackctl.daemon",
            "--host",
            "0.0.0.0",
            "--no-auth",
            "--port",
            home.env["SMACKCTL_PORT"],
        ],
        env=home.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "refusing to listen on 0.0.0.0 without a token" in r.stderr


def test_loaded_models_come_back_after_restart(home: object) -> None:
    from conftest import Home

    assert isinstance(home, Home)
    sup = launch(home)
    try:
        with sup.client() as c:
            assert (
                c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-b"}).status_code == 200
            )
    finally:
        shutdown(sup)
    sup = launch(home)
    try:
        wait_for(lambda: sup.model("tiny-b")["state"] == "ready", 30, "tiny-b to be restored")
        assert sup.model("tiny-a")["state"] == "stopped"
    finally:
        shutdown(sup)


def test_logprobs_need_logits_all_and_say_so(supervisor: Supervisor) -> None:
    with supervisor.client() as c:
        r = c.post("/v1/completions", json={"model": "tiny-a", "prompt": "x", "logprobs": 2})
    assert r.status_code == 400
    err = r.json()["error"]
    assert "cannot return logprobs" in err["message"]
    assert err["hint"].startswith("set `args: {logits_all: true}` for tiny-a")


def test_accepted_connections_have_nagle_off() -> None:
    """The listening socket says IPPROTO_TCP, so asyncio turns Nagle off on every connection
    it accepts. With proto 0 it did not, and each response's last segment waited for the
    client's delayed ACK: /health took 44 ms instead of 1 ms."""
    import asyncio
    import socket

    from smackctl.daemon.startup import bind as _bind

    sock = _bind("127.0.0.1", 0)
    sock.listen()
    port = sock.getsockname()[1]

    async def check() -> int:
        got: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def accepted(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            s = writer.get_extra_info("socket")
            got.set_result(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(accepted, sock=sock)
        _, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(got, 10)
        finally:
            w.close()
            server.close()

    assert asyncio.run(check()) != 0


def test_a_grammar_llama_cpp_cannot_parse_is_a_400_not_a_crash(supervisor: Supervisor) -> None:
    """llama-cpp-python adds the NULL sampler of an unparsable grammar to its chain and dies
    with SIGSEGV at the next token (found by the fuzzer); the runner program refuses it instead."""
    with supervisor.client() as c:
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-q8"}).status_code == 200
        pid = supervisor.model("tiny-q8")["pid"]
        for stream in (False, True):
            bad = {**CHAT, "model": "tiny-q8", "grammar": "M\u0005", "stream": stream}
            r = c.post("/v1/chat/completions", json=bad)
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert (
                err["code"] == "invalid_grammar" and "grammar could not be parsed" in err["message"]
            )
        good = {**CHAT, "model": "tiny-q8", "grammar": 'root ::= "yes" | "no"'}
        r = c.post("/v1/chat/completions", json=good)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] in (
            "yes",
            "no",
        )
    m = supervisor.model("tiny-q8")
    assert m["pid"] == pid and not m.get("crashes")  # the same runner, never restarted


def test_what_clients_send_that_llama_cpp_python_would_refuse_is_translated(
    supervisor: Supervisor,
) -> None:
    """A `developer` message, text parts in a system message, `tool_calls: null`, a function
    without `parameters`, OpenAI's `json_schema` response format: all valid OpenAI requests
    that llama_cpp.server refuses as they are (a 500), answered here."""
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    body = {
        **CHAT,
        "max_tokens": 40,
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Answer in JSON."}]},
            {"role": "user", "content": [{"type": "text", "text": "ok?"}], "name": None},
            {"role": "assistant", "content": None, "tool_calls": None},
            {"role": "user", "content": "ok?"},
        ],
        "tools": [{"type": "function", "function": {"name": "noop"}}],
        "tool_choice": "none",
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema, "strict": True},
        },
    }
    with supervisor.client() as c:
        r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    answer = json.loads(r.json()["choices"][0]["message"]["content"])  # the schema held
    assert isinstance(answer["ok"], bool)


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("/api/usage?since=false", "`since`"),
        ("/api/logs?lines=-2.1e-22", "`lines`"),
        ("/api/bench?limit=27184316269535466356736", "`limit`"),
    ],
)
def test_bad_query_parameters_are_400s(supervisor: Supervisor, url: str, needle: str) -> None:
    with supervisor.client() as c:
        r = c.get(url)
    assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text


def test_embeddings_from_a_model_not_loaded_for_them_is_a_400(supervisor: Supervisor) -> None:
    with supervisor.client() as c:
        r = c.post("/v1/embeddings", json={"model": "tiny-a", "input": "x"})
    assert r.status_code == 400
    assert "args: {embedding: true}" in r.json()["error"]["message"]
    assert supervisor.model("tiny-a")["state"] == "stopped"  # refused before any load
