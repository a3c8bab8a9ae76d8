"""`smackctl config export | import` (issue 29): profiles, keys (digests only) and their
limits and preferences in one file, carried from one real supervisor to another: a dry run
changes nothing, the import is checked whole first, and a key keeps working on the new one."""

from __future__ import annotations

from pathlib import Path

import httpx
import yaml

from conftest import CHAT, launch_on, profile_yaml, shutdown, smackctl


def test_settings_move_to_another_supervisor_and_its_keys_keep_working(
    tmp_path: Path, model_dir: Path
) -> None:
    sup = launch_on(tmp_path / "one", "test", profile_yaml(model_dir))
    first = sup.home
    try:
        key = smackctl(first, "keys", "create", "ann", "--models", "tiny-a", "--rpm", "50",
                       "--priority", "batch").stdout.strip()  # fmt: skip
        assert smackctl(first, "keys", "prefer", "ann", "--set", "max_tokens=3").returncode == 0
        out = tmp_path / "settings.yaml"
        done = smackctl(first, "config", "export", str(out))
        assert done.returncode == 0, done.stderr
        assert "wrote 1 profile(s) and 1 key(s)" in done.stdout
    finally:
        shutdown(sup)
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    text = out.read_text()
    assert key[13:] not in text and key not in text  # a digest, never the key
    data = yaml.safe_load(text)
    assert data["kind"] == "smackctl-settings/1" and list(data["profiles"]) == ["test"]
    assert data["keys"][0]["limits"] == {"rpm": 50}
    assert data["keys"][0]["preferences"] == {"sampling": {"max_tokens": 3}}

    # the second machine: the same models, another profile folder, no key yet; it starts on
    # a profile of its own, and takes the exported one from the file
    sup = launch_on(tmp_path / "two", "own", profile_yaml(model_dir))
    second, profiles = sup.home, tmp_path / "two" / "home" / "profiles"
    try:
        dry = smackctl(second, "config", "import", str(out), "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "profile test: new" in dry.stdout and "key ann: new" in dry.stdout
        assert "a dry run: nothing was changed" in dry.stderr
        assert not (profiles / "test.yaml").exists()
        with httpx.Client(base_url=sup.url, headers={"Authorization": f"Bearer {key}"}) as c:
            assert c.get("/v1/models").status_code == 401  # not imported yet
        done = smackctl(second, "config", "import", str(out))
        assert done.returncode == 0, done.stderr
        assert (profiles / "test.yaml").read_text() == data["profiles"]["test"]
        with httpx.Client(base_url=sup.url, headers={"Authorization": f"Bearer {key}"}) as c:
            hi = {"model": "tiny-a", "messages": CHAT["messages"], "temperature": 0}
            r = c.post("/v1/chat/completions", json=hi)
            assert r.status_code == 200, r.text  # the same key works here now
            assert r.json()["usage"]["completion_tokens"] <= 3  # with its preferences
        shown = smackctl(second, "keys", "show", "ann").stdout
        assert "models tiny-a" in shown and "limits rpm 50" in shown
        assert "max_tokens" in shown
        again = smackctl(second, "config", "import", str(out), "--dry-run")
        assert "profile test: same" in again.stdout and "key ann: same" in again.stdout

        broken = tmp_path / "broken.yaml"
        data["keys"][0]["digest"] = "not-a-digest"
        broken.write_text(yaml.safe_dump(data))
        bad = smackctl(second, "config", "import", str(broken))
        assert bad.returncode == 2 and "keys[0].digest is not valid" in bad.stderr
        data["keys"][0]["digest"] = "0" * 64
        data["keys"].append({**data["keys"][0], "name": "copy"})  # another key, the same id
        broken.write_text(yaml.safe_dump(data))
        twice = smackctl(second, "config", "import", str(broken))
        assert twice.returncode == 2 and "has the name or the id of another key" in twice.stderr
        other = tmp_path / "other.yaml"
        other.write_text("models: {}\n")
        wrong = smackctl(second, "config", "import", str(other))
        assert wrong.returncode == 2 and "is not a file `config export` wrote" in wrong.stderr
    finally:
        shutdown(sup)
