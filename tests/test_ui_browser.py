"""The page in a real browser (issue 30): Debian's headless Chromium, driven by Playwright,
against a real supervisor with real runners. Log in with `smackctl ui`'s link, see a loaded
model's row with its memory, watch a load appear by itself (pushed over the WebSocket: the
page asks for no status meanwhile), chat in the playground and see the answer stream, see a
403 for another key's usage, edit the profile into an error and see the message at its line.
Every page must run with no console error: a script or style the Content-Security-Policy
blocked would be one.

With SMACKCTL_SCREENSHOTS=DIR (``make docs``), each view is saved there as a PNG."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from conftest import CHAT, Supervisor, launch_on, make_key, profile_yaml, shutdown, smackctl

#: Chromium's flags on a machine with no network and no display (as root: no sandbox)
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
    "--disable-background-networking", "--disable-component-update",
]  # fmt: skip
SHOTS = os.environ.get("SMACKCTL_SCREENSHOTS")


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "Chromium is not installed: `make test-deps` installs Debian's chromium"
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def sup(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Supervisor]:
    s = launch_on(tmp_path_factory.mktemp("page"), "test", profile_yaml(model_dir))
    yield s
    shutdown(s)


class Watched:
    """A page with its console errors and the requests it made, kept for the asserts."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.refused: list[str] = []
        self.frames: list[dict[str, Any]] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("response", lambda r: self.refused.append(r.url) if r.status >= 400 else None)
        page.on("websocket", lambda ws: ws.on("framereceived", self._frame))

    def _frame(self, payload: Any) -> None:
        try:
            self.frames.append(json.loads(payload))
        except (TypeError, ValueError):
            pass

    def no_errors(self) -> None:
        assert self.errors == [], (self.errors, self.refused)


def logged_in(browser: Browser, sup: Supervisor) -> Watched:
    done = smackctl(sup.home, "ui", "--no-browser")
    assert done.returncode == 0, done.stderr
    page = browser.new_context().new_page()
    watched = Watched(page)
    page.goto(done.stdout.strip())
    expect(page.locator("#whoami")).to_have_text("operator")
    expect(page.locator("#live")).to_have_class("live on")
    return watched


def shot(page: Page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


def test_the_link_logs_in_and_the_overview_shows_a_loaded_models_memory(
    browser: Browser, sup: Supervisor
) -> None:
    with sup.client(timeout=120) as c:
        assert c.post("/api/models/tiny-a/load").status_code == 200
    w = logged_in(browser, sup)
    page = w.page
    assert "code=" not in page.url and page.url.startswith(sup.url + "/ui/")
    cookie = next(k for k in page.context.cookies() if k["name"] == "smackctl_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # no script can read the session
    row = page.locator('#models tr[data-model="tiny-a"]')
    expect(row.locator(".state")).to_have_text("ready")
    expect(row.locator(".mem")).to_contain_text("MiB")
    assert row.locator(".bar > span").evaluate("e => parseFloat(e.style.width)") > 0
    expect(page.locator("#budget")).to_contain_text("GiB")
    shot(page, "overview")
    w.no_errors()


def test_a_load_elsewhere_appears_by_itself_and_unload_works_from_the_page(
    browser: Browser, sup: Supervisor
) -> None:
    w = logged_in(browser, sup)
    page = w.page
    row = page.locator('#models tr[data-model="tiny-c"]')
    expect(row.locator(".state")).not_to_have_text("ready")
    asked = len(w.requests)
    with sup.client(timeout=120) as c:  # the CLI's way, not the page's
        assert c.post("/api/models/tiny-c/load").status_code == 200
    expect(row.locator(".state")).to_have_text("ready")
    assert not [u for u in w.requests[asked:] if "/api/status" in u]  # pushed, not polled
    row.locator("button.unload").click()  # a change from the page: cookie + CSRF token
    expect(row.locator(".state")).not_to_have_text("ready")
    assert sup.model("tiny-c")["state"] != "ready"
    w.no_errors()


def test_the_playground_streams_an_answer_with_its_headers(
    browser: Browser, sup: Supervisor
) -> None:
    w = logged_in(browser, sup)
    page = w.page
    page.locator('nav a[data-view="playground"]').click()
    page.locator("#pg-model").select_option("tiny-a")
    page.locator("#pg-max-tokens").fill("24")
    # greedy: the same tokens every run (sampled, the tiny random model could end at once)
    page.locator("#pg-temperature").fill("0")
    page.locator("#pg-prompt").fill("Tell me about the sea. ¿Qué tal? 你好")
    page.locator("#pg-send").click()
    out = page.locator("#pg-out-a")
    expect(out.locator(".headers")).to_contain_text("x-request-id")
    expect(out.locator(".headers")).to_contain_text("x-smackctl-deployment: tiny-a")
    # "total" is shown once it is over ("0 tokens" already after the first, role-only chunk)
    expect(out.locator(".stats")).to_contain_text("total")
    expect(out.locator(".stats")).to_contain_text("tokens")
    chunks = [f for f in w.frames if f.get("type") == "chunk"]
    assert len(chunks) > 2  # streamed: many frames, not one answer
    assert out.locator(".answer").inner_text().strip()
    shot(page, "playground")
    page.locator('nav a[data-view="activity"]').click()
    expect(page.locator("#activity tr[data-id] .status").first).to_have_text("200")
    shot(page, "activity")
    w.no_errors()


def test_activity_shows_a_failure_and_its_fix_and_usage_draws_its_charts(
    browser: Browser, sup: Supervisor
) -> None:
    w = logged_in(browser, sup)
    page = w.page
    page.locator('nav a[data-view="activity"]').click()
    with sup.client() as c:
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "nope"}).status_code == 404
    failed = page.locator("#activity tr.failed").first
    expect(failed).to_be_visible()
    expect(page.locator("#activity .error").first).to_contain_text("unknown model 'nope'")
    expect(page.locator("#activity .hint").first).to_contain_text("smackctl models")
    page.locator('nav a[data-view="usage"]').click()
    expect(page.locator("#chart-requests canvas")).to_have_count(1)
    expect(page.locator("#usage-table")).to_contain_text("tiny-a")
    href = page.locator("#usage-csv").get_attribute("href") or ""
    assert "format=csv" in href
    csv = page.evaluate("async h => (await fetch(h)).text()", href)
    assert csv.splitlines()[0].endswith("requests,tokens_in,tokens_out,errors,avg_ms,seconds,cost")
    shot(page, "usage")
    page.locator('nav a[data-view="events"]').click()
    expect(page.locator("#events li").first).to_be_visible()
    shot(page, "events")
    w.no_errors()


def test_a_keys_page_shows_its_own_and_a_403_for_another_keys_usage(
    browser: Browser, sup: Supervisor
) -> None:
    mine = make_key(sup, "page-dora", "--models", "tiny-a")
    make_key(sup, "page-eve", "--models", "tiny-a")
    page = browser.new_context().new_page()
    w = Watched(page)
    page.goto(sup.url + "/ui/")
    assert page.url == sup.url + "/ui/login"  # no session: the form
    page.locator("input[name=key]").fill(mine)
    page.locator("button[type=submit]").click()
    expect(page.locator("#whoami")).to_have_text("page-dora")
    expect(page.locator('nav a[data-view="keys"]')).to_be_hidden()
    expect(page.locator('#models tr[data-model="tiny-a"]')).to_have_count(1)
    expect(page.locator('#models tr[data-model="tiny-b"]')).to_have_count(0)
    answer = page.evaluate(
        "async () => { const r = await fetch('/api/usage?key=page-eve');"
        " return [r.status, (await r.json()).error.message]; }"
    )
    assert answer[0] == 403 and "its own usage only" in answer[1]
    # the one refusal the browser logged is that one: the page itself asked nothing it may not
    assert w.refused == [sup.url + "/api/usage?key=page-eve"] and len(w.errors) == 1
    page.locator("#logout").click()
    page.wait_for_url(sup.url + "/ui/login")
    page.goto(sup.url + "/ui/")
    assert page.url == sup.url + "/ui/login"  # the session ended


def test_the_profile_editor_shows_an_error_at_its_line(browser: Browser, sup: Supervisor) -> None:
    w = logged_in(browser, sup)
    page = w.page
    page.locator('nav a[data-view="profiles"]').click()
    editor = page.locator("#profile-text")
    expect(editor).to_have_value(sup.home.root.joinpath("profiles/test.yaml").read_text())
    text = editor.input_value()
    lines = text.splitlines()
    bad_at = next(i for i, line in enumerate(lines) if "n_ctx: 4096" in line) + 1
    lines[bad_at - 1] = lines[bad_at - 1].replace("4096", "lots")
    editor.fill("\n".join(lines) + "\n")
    problem = page.locator(f'#profile-problems li[data-line="{bad_at}"]')
    expect(problem).to_contain_text("n_ctx")
    # the same words `smackctl profile validate` prints for such a file
    copy = sup.home.root / "bad" / "test.yaml"
    copy.parent.mkdir(exist_ok=True)
    copy.write_text("\n".join(lines) + "\n")
    said = smackctl(sup.home, "profile", "validate", str(copy)).stdout
    line = next(x for x in said.splitlines() if f":{bad_at} " in x)
    assert problem.inner_text().split(f":{bad_at} ", 1)[1] == line.split(f":{bad_at} ", 1)[1]
    expect(page.locator("#profile-apply")).to_be_disabled()
    expect(page.locator("#profile-diff")).to_contain_text("+    n_ctx: lots")
    shot(page, "profiles")
    editor.fill(text)  # back as it was: no problem left
    expect(page.locator("#profile-problems li")).to_have_count(0)
    expect(page.locator("#profile-apply")).to_be_enabled()
    w.no_errors()
    with httpx.Client(base_url=sup.url) as c:  # nothing was written meanwhile
        assert c.get("/health").status_code == 200
    assert "lots" not in sup.home.root.joinpath("profiles/test.yaml").read_text()


def test_keys_are_made_and_revoked_from_the_page(browser: Browser, sup: Supervisor) -> None:
    w = logged_in(browser, sup)
    page = w.page
    page.locator('nav a[data-view="keys"]').click()
    page.locator("#key-name").fill("from-the-page")
    page.locator("#key-models").fill("tiny-a")
    page.locator("#key-rpm").fill("30")
    page.locator("#key-create button[type=submit]").click()
    secret = page.locator("#key-secret")
    expect(secret).to_contain_text("smk-")
    token = next(t for t in secret.inner_text().split() if t.startswith("smk-"))
    row = page.locator('#keys tr[data-key="from-the-page"]')
    expect(row).to_contain_text("tiny-a")
    expect(row).to_contain_text("30")
    with httpx.Client(base_url=sup.url, headers={"Authorization": f"Bearer {token}"}) as c:
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"}).status_code == 200
        page.once("dialog", lambda d: d.accept())
        row.locator("button.revoke").click()
        expect(row).to_contain_text("revoked")
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"}).status_code == 401
    shot(page, "keys")
    w.no_errors()


def test_the_playground_compares_two_models_side_by_side(browser: Browser, sup: Supervisor) -> None:
    w = logged_in(browser, sup)
    page = w.page
    page.locator('nav a[data-view="playground"]').click()
    page.locator("#pg-model").select_option("tiny-a")
    page.locator("#pg-compare").check()
    page.locator("#pg-model-b").select_option("tiny-b")
    page.locator("#pg-max-tokens").fill("12")
    page.locator("#pg-prompt").fill("One prompt, two models.")
    page.keyboard.press("Control+Enter")
    for column, name in (("#pg-out-a", "tiny-a"), ("#pg-out-b", "tiny-b")):
        out = page.locator(column)
        expect(out.locator(".headers")).to_contain_text(f"x-smackctl-deployment: {name}")
        expect(out.locator(".stats")).to_contain_text("total")  # over, not only begun
        assert out.locator(".answer").inner_text().strip()
    w.no_errors()


def test_a_switch_shows_its_plan_before_it_asks_and_logs_follow_live(
    browser: Browser, sup: Supervisor
) -> None:
    profiles = sup.home.root / "profiles"
    (profiles / "small.yaml").write_text(
        (profiles / "test.yaml").read_text().replace("name: test", "name: small")
    )
    w = logged_in(browser, sup)
    page = w.page
    page.locator("#switch-profile").select_option(label="small")
    page.locator("#switch-plan").click()
    expect(page.locator("#plan")).to_contain_text("test → small")
    expect(page.locator("#switch-apply")).to_be_visible()  # asks; nothing switched yet
    assert sup.status()["profile"] == "test"
    # the supervisor's log, followed: a request made elsewhere appears in it
    page.locator('nav a[data-view="events"]').click()
    expect(page.locator("#logs")).to_contain_text("supervisor")
    with sup.client() as c:
        r = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"})
    rid = r.headers["x-request-id"]
    expect(page.locator("#logs")).to_contain_text(rid, timeout=10_000)
    page.locator("#logs-filter").fill(rid)
    assert all(rid in line for line in page.locator("#logs").inner_text().splitlines() if line)
    w.no_errors()


def test_a_profile_edit_is_applied_after_its_plan_is_shown(
    browser: Browser, sup: Supervisor
) -> None:
    w = logged_in(browser, sup)
    page = w.page
    page.locator('nav a[data-view="profiles"]').click()
    editor = page.locator("#profile-text")
    expect(editor).not_to_have_value("")
    editor.fill(
        editor.input_value().replace("    fast: tiny-b\n", "    fast: tiny-b\n    quick: tiny-b\n")
    )
    expect(page.locator("#profile-diff")).to_contain_text("+    quick: tiny-b")
    expect(page.locator("#profile-apply")).to_be_enabled()
    page.locator("#profile-apply").click()
    expect(page.locator("#profile-plan")).to_contain_text("tiny-a")  # the plan, first
    assert "quick" not in sup.home.root.joinpath("profiles/test.yaml").read_text()
    page.locator("#profile-confirm").click()
    expect(page.locator("#profile-plan")).to_contain_text("done: profile test active")
    assert "quick: tiny-b" in sup.home.root.joinpath("profiles/test.yaml").read_text()
    with sup.client() as c:  # the running configuration has the new alias
        r = c.post("/v1/chat/completions", json={**CHAT, "model": "quick"})
        assert r.status_code == 200 and r.headers["x-smackctl-deployment"] == "tiny-b"
    w.no_errors()
