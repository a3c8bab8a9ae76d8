"""Models from a folder: the scan's rules on real files, and a real supervisor whose
profile's models_dir is watched (a file added or removed is a model added or removed, with
no restart), plus `smackctl models discover DIR`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from smackctl.discover import model_name, scan

from conftest import Home, launch, shutdown, smackctl, wait_for
from tinygguf import write_tiny_gguf


def _tiny(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_tiny_gguf(path, seed=seed, name=path.stem)


def test_the_scan_names_splits_projectors_and_duplicates(tmp_path: Path) -> None:
    _tiny(tmp_path / "a.gguf")
    _tiny(tmp_path / "sub" / "model.gguf", seed=1)
    _tiny(tmp_path / "other" / "model.gguf", seed=2)
    (tmp_path / "copies").mkdir()
    shutil.copy(tmp_path / "a.gguf", tmp_path / "copies" / "a-copy.gguf")  # the same content
    _tiny(tmp_path / "my model (v2).gguf", seed=3)
    for i in (1, 2):  # a whole split model, and one with a part missing
        _tiny(tmp_path / "big" / f"big-0000{i}-of-00002.gguf", seed=10 + i)
    _tiny(tmp_path / "big" / "half-00001-of-00003.gguf", seed=20)
    _tiny(tmp_path / "big" / "half-00002-of-00003.gguf", seed=21)
    _tiny(tmp_path / "vision" / "llava.gguf", seed=30)
    (tmp_path / "vision" / "mmproj-llava-f16.gguf").write_bytes(b"GGUF")
    (tmp_path / "notes.txt").write_text("not a model")
    found = scan(tmp_path, frozenset({"taken"}))
    by = {f.name: f for f in found.found}
    assert set(by) == {"a", "model", "model-2", "my-model-v2", "big", "llava"}, set(by)
    assert by["big"].parts == 2 and by["big"].path.name == "big-00001-of-00002.gguf"
    assert by["big"].size == sum(p.stat().st_size for p in (tmp_path / "big").glob("big-*"))
    assert by["llava"].projector == tmp_path / "vision" / "mmproj-llava-f16.gguf"
    assert by["a"].projector is None
    assert found.duplicates == [(tmp_path / "copies" / "a-copy.gguf", "a")]
    assert any("half-00003-of-00003.gguf missing" in n for n in found.notes)
    assert model_name("..x/..") == "x" and model_name("***") == "model"
    assert scan(tmp_path, frozenset({"a"})).found[0].name != "a"  # a taken name is not reused
    # a copy of a file that is a model already: the copy is the duplicate, whatever its name
    shutil.copy(tmp_path / "a.gguf", tmp_path / "0-first-in-order.gguf")
    again = scan(tmp_path, frozenset(), frozenset({tmp_path / "a.gguf"}))
    assert "a" in {f.name for f in again.found}
    assert (tmp_path / "0-first-in-order.gguf", "a") in again.duplicates


def test_a_watched_models_dir_and_models_discover(home: Home, tmp_path: Path) -> None:
    shelf = tmp_path / "shelf"
    _tiny(shelf / "first.gguf")
    (home.root / "profiles" / "test.yaml").write_text(f"name: test\nmodels_dir: {shelf}\n")
    sup = launch(home)
    try:
        assert sup.model("first")["state"] == "stopped"
        with sup.client(timeout=60) as c:
            r = c.post(
                "/v1/chat/completions",
                json={
                    "model": "first",
                    "max_tokens": 2,
                    "messages": [{"role": "user", "content": "hi"}],
                },
            )
            assert r.status_code == 200, r.text
            _tiny(shelf / "later" / "second.gguf", seed=5)  # appears with no restart
            wait_for(lambda: any(m["name"] == "second" for m in sup.status()["models"]), 20,
                     "second to be discovered")  # fmt: skip
            events = c.get("/api/events", params={"follow": 0, "types": "discovered"}).text
            assert '"added": ["second"]' in events
            (shelf / "later" / "second.gguf").unlink()
            wait_for(lambda: all(m["name"] != "second" for m in sup.status()["models"]), 20,
                     "second to be gone")  # fmt: skip
        elsewhere = tmp_path / "elsewhere"
        _tiny(elsewhere / "third.gguf", seed=6)
        shutil.copy(shelf / "first.gguf", shelf / "copy-of-first.gguf")  # the same content
        wait_for(
            lambda: any(
                "copy-of-first.gguf has the same content as first" in w
                for w in sup.status()["warnings"]
            ),
            20,
            "the duplicate's warning",
        )
        assert all(m["name"] != "copy-of-first" for m in sup.status()["models"])
        shutil.copy(shelf / "first.gguf", elsewhere / "first-again.gguf")
        out = smackctl(home, "models", "discover", str(elsewhere))
        assert out.returncode == 0, out.stderr
        assert "added third" in out.stdout and "first-again" in out.stdout
        again = json.loads(smackctl(home, "models", "discover", "--json", str(elsewhere)).stdout)
        assert again["added"] == [] and "third" in again["known"]
        listed = json.loads(smackctl(home, "models", "list", "--json").stdout)
        origins = {m["name"]: m["origin"] for m in listed}
        assert origins["first"] == "discovered" and origins["third"] == "added"
    finally:
        shutdown(sup)
