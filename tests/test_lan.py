"""Serving other machines: a LAN bind admits the machine's own names and the allowed ones
(Host header), says once that plain HTTP is unencrypted, prints a URL that works from
elsewhere; with a certificate it serves HTTPS, and the CLI trusts that certificate.

Every request here goes to 127.0.0.1 (with the Host header a LAN client would send): no
traffic leaves loopback."""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path

import httpx
import pytest

from smackctl.netaddr import display_url, lan_address, own_names

from conftest import Home, launch, self_signed, shutdown, smackctl


def _ask(url: str, token: str, host: str, **kw: object) -> httpx.Response:
    return httpx.get(
        url + "/api/status",
        headers={"Authorization": f"Bearer {token}", "Host": host},
        timeout=30,
        **kw,  # type: ignore[arg-type]
    )


def test_a_lan_bind_admits_the_machines_names_and_the_allowed_ones(home: Home) -> None:
    port = home.env["SMACKCTL_PORT"]
    home.env["SMACKCTL_ALLOWED_HOSTS"] = "llm.example.lan"
    with (Path(home.env["SMACKCTL_PROFILE_DIR"]) / "test.yaml").open("a") as f:
        f.write("allowed_hosts: [proxy.example.lan]\n")
    sup = launch(home, "--host", "0.0.0.0", "--allowed-host", "box.example.lan")
    try:
        names = [socket.gethostname(), "llm.example.lan", "box.example.lan", "proxy.example.lan"]
        lan = lan_address()
        if lan is not None:
            names.append(lan if ":" not in lan else f"[{lan}]")
        for name in names:
            r = _ask(sup.url, sup.token, f"{name}:{port}")
            assert r.status_code == 200, (name, r.text)
        bad = _ask(sup.url, sup.token, f"evil.example:{port}")
        assert bad.status_code == 403
        message = bad.json()["error"]["message"]
        assert "Host 'evil.example:" in message and "--allowed-host" in message
        # said once, at the start: a LAN bind without a certificate is not encrypted
        assert sup.log().count("over plain HTTP: the token and every prompt cross") == 1
        st = smackctl(home, "status", "--json")
        assert "over plain HTTP" in " ".join(json.loads(st.stdout)["warnings"])
        env = smackctl(home, "env")
        assert env.returncode == 0, env.stderr
        base = env.stdout.splitlines()[0].split("=", 1)[1]
        assert "0.0.0.0" not in base and base.endswith(f":{port}/v1")
        shown = json.loads(smackctl(home, "config", "show", "--json").stdout)
        assert shown["host"] == "0.0.0.0" and shown["port"] == int(port)
        assert shown["address_from"] == "the running supervisor"
        # the page's login link is one a browser elsewhere can open
        link = smackctl(home, "ui", "--no-browser").stdout.strip()
        assert "/ui/login?code=" in link and "0.0.0.0" not in link and f":{port}/" in link
    finally:
        shutdown(sup)


def test_a_loopback_bind_still_answers_loopback_names_only(home: Home) -> None:
    sup = launch(home)
    try:
        port = home.env["SMACKCTL_PORT"]
        assert _ask(sup.url, sup.token, f"localhost:{port}").status_code == 200
        assert _ask(sup.url, sup.token, f"{socket.gethostname()}:{port}").status_code == 403
    finally:
        shutdown(sup)


def test_own_names_and_the_url_from_elsewhere() -> None:
    names = own_names("0.0.0.0")
    assert socket.gethostname().lower() in names
    assert "127.0.0.1" in names  # every interface's address, loopback's too
    assert own_names("192.0.2.7") >= {"192.0.2.7"}
    assert display_url("http://127.0.0.1:7622") == "http://127.0.0.1:7622"
    lan = lan_address()
    if lan is not None and ":" not in lan:
        assert display_url("http://0.0.0.0:7622") == f"http://{lan}:7622"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


def test_with_a_certificate_it_serves_https(home: Home, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    r = smackctl(home, "start", "--tls-cert", str(cert), "--tls-key", str(key))
    assert r.returncode == 0, r.stderr
    port = home.env["SMACKCTL_PORT"]
    try:
        assert r.stdout.strip() == f"https://127.0.0.1:{port}"
        token = (home.state / "token").read_text().strip()
        ok = _ask(
            f"https://127.0.0.1:{port}",
            token,
            f"127.0.0.1:{port}",
            verify=ssl.create_default_context(cafile=str(cert)),
        )
        assert ok.status_code == 200
        with pytest.raises(httpx.HTTPError):  # plain HTTP gets no answer on an HTTPS port
            _ask(f"http://127.0.0.1:{port}", token, f"127.0.0.1:{port}")
        # the CLI trusts the certificate of the supervisor it started
        st = smackctl(home, "status", "--json")
        assert st.returncode == 0, st.stderr
        assert json.loads(st.stdout)["url"].startswith("https://")
        env = smackctl(home, "env")
        assert f"export OPENAI_BASE_URL=https://127.0.0.1:{port}/v1" in env.stdout
        # the page's link is HTTPS, and its session cookie is Secure
        link = smackctl(home, "ui", "--no-browser").stdout.strip()
        assert link.startswith(f"https://127.0.0.1:{port}/ui/login?code=")
        login = httpx.get(link, verify=ssl.create_default_context(cafile=str(cert)))
        assert login.status_code == 303 and "Secure" in login.headers["set-cookie"]
    finally:
        smackctl(home, "stop", "--force")


def test_a_key_without_a_certificate_is_a_clear_error(
    home: Home, certificate: tuple[Path, Path]
) -> None:
    cert, _ = certificate
    r = smackctl(home, "start", "--tls-key", str(cert))
    assert r.returncode != 0
    assert "HTTPS needs both a certificate and its key" in r.stderr
    bad = smackctl(home, "start", "--tls-cert", str(cert), "--tls-key", str(cert))
    assert bad.returncode != 0
    assert "cannot be used" in bad.stderr and "Traceback" not in bad.stderr
