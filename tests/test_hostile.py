"""Issue 26, "nothing freezes": what comes from a request, a file or a remote server never holds
the supervisor's event loop, and bad input is a clear error, never a 500. Hostile inputs on
their own (profile YAML, GGUF headers, the loop's lag recorder), then through a real
supervisor: a non-English `model: auto` prompt, deeply nested JSON on every JSON route, hostile
GGUF files in a watched models_dir, alias bombs and empty files on hot reload."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from smackctl import gguf
from smackctl.config import Profile
from smackctl.daemon.metrics import LoopLag
from smackctl.discover import scan
from smackctl.errors import ModelLoadError
from smackctl.estimate import estimate_memory
from smackctl.paths import get_paths
from smackctl.profile_file import profiles_defining, validate_profile_file

from conftest import Home, Supervisor, launch, launch_on, shutdown, wait_for
from tinygguf import (
    _gguf,
    _str,
    write_huge_array_gguf,
    write_huge_dims_gguf,
    write_long_string_gguf,
    write_nested_arrays_gguf,
    write_odd_types_gguf,
    write_tiny_gguf,
)

# -- profiles ------------------------------------------------------------------------------

#: six levels of ten aliases: a million values from a few hundred bytes
BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n" for a, b in zip("abcde", "bcdef", strict=True)
)
SELF = "loop: &a [1, *a]\n"


def _issues(tmp_path: Path, text: str | bytes, name: str = "p.yaml") -> list[str]:
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    profile, issues = validate_profile_file(p)
    assert profile is None
    return [str(i) for i in issues]


def test_hostile_profile_yaml_is_refused_with_its_line(tmp_path: Path) -> None:
    (bomb,) = _issues(tmp_path, "models: {}\n" + BOMB)
    assert "p.yaml:" in bomb and "expands to more than 20,000 values" in bomb
    (self_ref,) = _issues(tmp_path, "models: {}\n" + SELF)
    assert self_ref.startswith(f"{tmp_path / 'p.yaml'}:2 loop.1: a YAML alias refers to")
    (deep,) = _issues(tmp_path, "models: {}\nx: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nests more than 64 levels deep" in deep
    (flow,) = _issues(tmp_path, "models: {}\nx: " + "[" * 100 + "]" * 100 + "\n")
    assert "nests more than 64 levels deep" in flow
    (key,) = _issues(tmp_path, "models: {}\n? [a, b]\n: c\n")
    assert "a key must be a plain value" in key
    for empty in ("", "\n\n", "# only a comment\n"):
        (issue,) = _issues(tmp_path, empty)
        assert "the file is empty" in issue and "`models: {}`" in issue
    assert "must be a mapping" in _issues(tmp_path, "- a\n- b\n")[0]
    assert "not UTF-8 text" in _issues(tmp_path, b"models: {}\nname: \xff\n")[0]
    assert "over 1024 KiB" in _issues(tmp_path, "models: {}\n" + "#" * 2**20 + "\n")[0]
    os.mkfifo(tmp_path / "fifo.yaml")  # a read would wait for a writer for good
    profile, issues = validate_profile_file(tmp_path / "fifo.yaml")
    assert profile is None and "not a regular file" in str(issues[0])
    # a profile that only routes, or only has a models_dir, stays valid
    (tmp_path / "ok.yaml").write_text("models: {}\n")
    assert validate_profile_file(tmp_path / "ok.yaml")[0] == Profile(name="ok")


def test_other_profiles_are_read_once_and_only_when_asked_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMACKCTL_PROFILE_DIR", str(tmp_path))
    (tmp_path / "other.yaml").write_text(
        f"models:\n  zeta:\n    path: {__file__}\n    aliases: [z]\n"
    )
    (tmp_path / "bomb.yaml").write_text("models: {}\n" + BOMB)
    assert profiles_defining("zeta", parse=False) == []  # never read: nothing to say
    assert profiles_defining("z") == ["other"]
    assert profiles_defining("zeta", parse=False) == ["other"]  # what the read found
    (tmp_path / "other.yaml").write_text("models: {}\n")  # changed: not read again, not used
    assert profiles_defining("zeta", parse=False) == []
    assert profiles_defining("zeta") == []


# -- GGUF headers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("write", "says"),
    [
        (write_huge_dims_gguf, "a tensor has 100,000 dimensions; GGUF allows at most 4"),
        (write_nested_arrays_gguf, "arrays nested more than 4 deep"),
        (write_long_string_gguf, "a string (1,099,511,627,776 bytes) runs past the end"),
        (write_huge_array_gguf, "an array of 4,611,686,018,427,387,904 values"),
    ],
)
def test_a_hostile_gguf_header_is_a_clear_error(tmp_path: Path, write: Any, says: str) -> None:
    path = write(tmp_path / "hostile.gguf")
    with pytest.raises(ModelLoadError) as err:
        gguf.read_info(path)
    assert says in err.value.message, err.value.message
    assert err.value.message.startswith(f"{path} is not a readable GGUF file: ")


def test_odd_metadata_types_read_as_unknown(tmp_path: Path) -> None:
    info = gguf.read_info(write_odd_types_gguf(tmp_path / "odd.gguf"))
    assert info.architecture == "llama"
    assert (info.layers, info.context_length, info.heads) == (None, None, None)
    assert estimate_memory(info, 512).ram > 0


def test_a_header_read_is_remembered_failures_too(tmp_path: Path) -> None:
    path = write_long_string_gguf(tmp_path / "m.gguf")
    size, stamp = path.stat().st_size, path.stat().st_mtime_ns
    with pytest.raises(ModelLoadError, match="runs past the end"):
        gguf.read_info(path)
    # the same size, mtime and inode: not read again (a valid header now, the error stays)
    pad = size - 4 - 20 - 8 - 1 - 4 - 8
    valid = _gguf(
        tmp_path / "v.gguf", 0, _str(b"k") + (8).to_bytes(4, "little") + _str(b"x" * pad), 1
    )
    with path.open("r+b") as f:
        f.write(valid.read_bytes())
    os.utime(path, ns=(stamp, stamp))
    assert path.stat().st_size == size
    with pytest.raises(ModelLoadError, match="runs past the end"):
        gguf.read_info(path)
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))  # changed: read again
    assert gguf.read_info(path).file_size == size


# -- the loop's lag ------------------------------------------------------------------------


def test_the_lag_recorder_keeps_the_worst_of_its_window() -> None:
    now = [100.0]
    lag = LoopLag(every=0.02, window=10.0, clock=lambda: now[0])
    assert lag.worst() == 0.0 and lag.warning() is None
    now[0] = 100.25
    lag.record(due=100.02)  # woke 230 ms late
    now[0] = 101.0
    lag.record(due=100.99)
    assert lag.worst() == pytest.approx(0.23)
    warning = lag.warning()
    assert warning is not None and "held for 230 ms in the last 10 s" in warning
    now[0] = 110.3  # the late wake-up left the window
    lag.record(due=110.29)
    assert lag.worst() == pytest.approx(0.01) and lag.warning() is None
    lag._due = 110.31  # a sleep due now, while the loop is still held
    now[0] = 110.81
    assert lag.worst() == pytest.approx(0.5)


@pytest.fixture
def in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``make(profile_text)``: a Scheduler of its own, in this process, for a test running
    its own event loop (its store closed at the end)."""
    from smackctl.daemon.scheduler import Scheduler
    from smackctl.daemon.store import Store

    monkeypatch.setenv("SMACKCTL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SMACKCTL_PROFILE_DIR", str(tmp_path / "profiles"))
    (tmp_path / "profiles").mkdir()
    paths = get_paths().ensure()
    made: list[Scheduler] = []

    def make(text: str) -> Scheduler:
        (tmp_path / "profiles" / "p.yaml").write_text(text)
        profile, issues = validate_profile_file(tmp_path / "profiles" / "p.yaml")
        assert profile is not None, issues
        made.append(Scheduler(paths, Store(paths.db_path), profile, tmp_path / "profiles/p.yaml"))
        return made[-1]

    yield make
    for sched in made:
        sched.store.close()


def test_the_models_dir_rescan_runs_on_a_thread(tmp_path: Path, in_process: Any) -> None:
    """Its scan hashes same-size files: the watch hands it to a thread, then applies it."""
    from smackctl.daemon.reload import Reloader

    shelf = tmp_path / "shelf"
    shelf.mkdir()
    write_tiny_gguf(shelf / "one.gguf", seed=1, name="one")
    threads: list[threading.Thread] = []

    def scanning(*args: Any) -> Any:
        threads.append(threading.current_thread())
        return scan(*args)

    async def go() -> dict[str, list[str]]:
        sched = in_process(f"models_dir: {shelf}\nmodels: {{}}\n")
        (shelf / "two.gguf").write_bytes((shelf / "one.gguf").read_bytes())  # same size
        write_tiny_gguf(shelf / "three.gguf", seed=3, name="three")
        change = await Reloader(sched, scan=scanning).rescan()
        same = f"{shelf / 'two.gguf'} has the same content as one: left out"
        assert sched.registry.scan_notes == [same]
        return change

    assert asyncio.run(go()) == {"added": ["three"], "removed": []}
    assert threads and threading.main_thread() not in threads


def test_an_unknown_model_reads_no_profile_on_the_loop(tmp_path: Path, in_process: Any) -> None:
    """The hint for an unknown model names the profile that defines it: on the event loop
    from what a read on a thread found, never from YAML parsed there (an alias bomb, or any
    big file, would hold every request)."""
    from smackctl.errors import ModelNotFound

    async def go() -> None:
        sched = in_process(f"models:\n  a:\n    path: {__file__}\n")
        (tmp_path / "profiles" / "other.yaml").write_text(
            f"models:\n  zeta:\n    path: {__file__}\n"
        )
        with pytest.raises(ModelNotFound) as first:
            sched.resolve("zeta")
        assert first.value.hint is not None and "profile other" not in first.value.hint
        await sched.registry.read_profiles()  # begun by the miss, on a thread
        with pytest.raises(ModelNotFound) as then:
            sched.resolve("zeta")
        assert then.value.hint == (
            "zeta is a model of profile other: switch to it with `smackctl profile switch other`"
        )

    asyncio.run(go())


# -- through a real supervisor -------------------------------------------------------------


@pytest.fixture(scope="module")
def sup(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Supervisor]:
    root = tmp_path_factory.mktemp("hostile")
    shelf = root / "shelf"
    shelf.mkdir()
    write_huge_dims_gguf(shelf / "dims.gguf", 20_000)
    write_nested_arrays_gguf(shelf / "nested.gguf")
    write_long_string_gguf(shelf / "long.gguf")
    write_huge_array_gguf(shelf / "array.gguf")
    s = launch_on(
        root,
        "hostile",
        f"models_dir: {shelf}\nmodels:\n"
        f"  general: {{path: {model_dir / 'tiny-a.gguf'}, n_ctx: 512, threads: 1}}\n"
        f"  coder: {{path: {model_dir / 'tiny-b.gguf'}, n_ctx: 512, threads: 1}}\n"
        "routing:\n  default_model: auto\n  auto: {code: coder, general: general}\n",
    )
    yield s
    shutdown(s)


def test_a_non_english_prompt_routes_streamed_or_not(sup: Supervisor) -> None:
    ask = {"max_tokens": 2, "messages": [{"role": "user", "content": "почему падает данные.py?"}]}
    with sup.client() as c:
        r = c.post("/v1/chat/completions", json={**ask, "model": "auto"})
        assert r.status_code == 200, r.text
        header = r.headers["X-Smackctl-Route"]
        assert header.isascii()
        assert unquote(header) == "general; too few signs of code (file name данные.py)"
        with c.stream("POST", "/v1/chat/completions", json={**ask, "stream": True}) as s:
            assert s.status_code == 200
            assert unquote(s.headers["X-Smackctl-Route"]).startswith("general; too few")
            assert list(s.iter_lines())[-2:] == ["data: [DONE]", ""]
        wait_for(lambda: sup.model("general")["in_flight"] == 0, 10, "the slot to be free")


def _nested(depth: int) -> str:
    return '{"model": "general", "messages": ' + "[" * depth + "]" * depth + "}"


def test_deeply_nested_json_is_a_400_on_every_json_route(sup: Supervisor) -> None:
    routes = [
        "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages",
        "/v1/responses", "/api/route", "/api/models", "/api/models/discover",
        "/api/models/general/bench", "/api/profiles/switch", "/api/shutdown",
    ]  # fmt: skip
    bodies = [
        "[" * 1000 + "]" * 1000,  # json.loads: RecursionError
        '{"a":' * 1000 + "1" + "}" * 1000,
        _nested(150),  # parsed, but past the bound: refused before anything walks it
    ]
    with sup.client() as c:
        for path in routes:
            for body in bodies:
                r = c.post(path, content=body, headers={"Content-Type": "application/json"})
                assert r.status_code == 400, (path, body[:20], r.status_code, r.text)
                assert "request body nests too deeply" in r.json()["error"]["message"]
        r = c.post("/api/route", content=_nested(50), headers={"Content-Type": "application/json"})
        assert r.status_code == 200, r.text  # nesting a request may have is fine
        assert c.get("/health").status_code == 200


def test_a_lone_surrogate_is_a_400_and_the_cli_sends_bad_bytes_as_text(sup: Supervisor) -> None:
    """JSON lets a string hold half a UTF-16 pair (``"\\udcff"``); it is no text: refused
    with a 400 on every route that reads a body, before a runner (llama-server's parser and
    llama-cpp-python's encoder each answered it with a 500 of their own words). A whole pair
    is an emoji and fine. The CLI reads stdin's bytes that are not UTF-8 as U+FFFD."""
    lone = (
        '{"model": "general", "max_tokens": 2, '
        '"messages": [{"role": "user", "content": "a\\udcffb"}]}'
    )
    pair = lone.replace("\\udcff", "\\ud83d\\ude00")
    with sup.client() as c:
        for path in ("/v1/chat/completions", "/v1/messages", "/v1/responses", "/api/route"):
            r = c.post(path, content=lone, headers={"Content-Type": "application/json"})
            assert r.status_code == 400, (path, r.text)
            assert "lone UTF-16 surrogate (\\udcff)" in r.json()["error"]["message"]
        r = c.post(
            "/v1/chat/completions", content=pair, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 200, r.text
    done = subprocess.run(
        [sys.executable, "-m", "smackctl", "chat", "-m", "general", "--max-tokens", "2"],
        input=b"\xff\xfe bad bytes", capture_output=True, timeout=120,
        # strict decoding, as under en_US.UTF-8 (C and C.UTF-8 decode with surrogateescape)
        env={**sup.home.env, "PYTHONIOENCODING": "utf-8:strict"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode(errors="replace")


def test_hostile_gguf_files_in_the_models_dir_are_errors_in_their_entries(sup: Supervisor) -> None:
    with sup.client() as c:
        r = c.get("/api/models", params={"details": 1})
        assert r.status_code == 200, r.text
        errors = {m["name"]: m.get("gguf_error", "") for m in r.json()}
    assert "GGUF allows at most 4" in errors["dims"]
    assert "arrays nested more than 4 deep" in errors["nested"]
    assert "runs past the end of the file" in errors["long"]
    assert "an array of 4,611,686,018,427,387,904 values" in errors["array"]
    assert errors["general"] == ""
    with sup.client() as c:  # one of them: the view, its problem named, not an error answer
        r = c.get("/api/models/nested")
        assert r.status_code == 200, r.text
        assert "arrays nested more than 4 deep" in r.json()["gguf_error"]
        assert r.json()["on_disk"] is True and "gguf" not in r.json()


def test_a_switch_plan_to_hostile_models_plans_and_names_them(sup: Supervisor) -> None:
    other = sup.home.root / "profiles" / "shelf.yaml"
    shelf = sup.home.root.parent / "shelf"
    other.write_text(
        f"models:\n  d: {{path: {shelf / 'dims.gguf'}}}\n  n: {{path: {shelf / 'nested.gguf'}}}\n"
    )
    with sup.client() as c:
        r = c.post("/api/profiles/switch", json={"path": str(other), "dry_run": True})
        assert r.status_code == 200, r.text
        assert {s["model"] for s in r.json()["steps"]} >= {"d", "n"}
        assert c.get("/health").status_code == 200


def test_the_loop_lag_is_a_metric(sup: Supervisor) -> None:
    with sup.client() as c:
        text = c.get("/metrics").text
    (line,) = [x for x in text.splitlines() if x.startswith("smackctl_event_loop_lag_seconds ")]
    assert 0.0 <= float(line.split()[1]) < 1.0  # an idle supervisor: a few ms at most


def test_a_fifo_among_the_profiles_holds_nothing(home: Home) -> None:
    """An unknown model's hint reads the other profiles: a FIFO there would wait for a writer
    for good (once on the event loop: every request and /health with it)."""
    sup = launch(home)
    try:
        os.mkfifo(home.root / "profiles" / "pipe.yaml")
        (home.root / "profiles" / "other.yaml").write_text(
            f"models:\n  zeta:\n    path: {__file__}\n"
        )
        with sup.client(timeout=10) as c:
            first = c.post("/v1/completions", json={"model": "zeta", "prompt": "hi"})
            assert first.status_code == 404, first.text
            wait_for(
                lambda: (
                    "zeta is a model of profile other"
                    in c.post("/v1/completions", json={"model": "zeta", "prompt": "hi"}).text
                ),
                10,
                "the hint",
            )
            assert c.get("/health").status_code == 200
    finally:
        shutdown(sup)


def _reload(c: httpx.Client) -> dict[str, Any]:
    r = c.post("/api/profiles/reload")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_hostile_profile_edits_leave_the_models_running_and_the_watch_going(home: Home) -> None:
    profile = home.root / "profiles" / "test.yaml"
    good = profile.read_text()
    sup = launch(home)
    try:
        with sup.client() as c:
            r = c.post("/v1/completions", json={"model": "tiny-a", "prompt": "hi", "max_tokens": 1})
            assert r.status_code == 200, r.text
            for text, says in [
                (good + BOMB, "expands to more than 20,000 values"),
                (good + SELF, "a YAML alias refers to a value that contains it"),
                ("", "the file is empty"),
            ]:
                profile.write_text(text)
                # the watch saw it, and said so
                wait_for(lambda says=says: any(says in w for w in sup.status()["warnings"]), 20,
                         f"the watch to report {says!r}")  # fmt: skip
                answer = _reload(c)
                assert answer["ok"] is False and says in " ".join(answer["issues"])
                assert sup.model("tiny-a")["state"] == "ready"
            # a valid edit is still applied by the watch
            profile.write_text(good.replace("aliases: [a]", "aliases: [a, alpha]"))
            wait_for(lambda: "alpha" in sup.model("tiny-a")["aliases"], 20, "the edit applied")
            assert sup.model("tiny-a")["state"] == "ready"
            assert not any("invalid" in w for w in sup.status()["warnings"])
            assert _reload(c)["ok"] is True
    finally:
        shutdown(sup)
