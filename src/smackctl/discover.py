"""Every GGUF model under a folder, as llama-server's ``--models-dir`` and LM Studio's models
folder see them: a profile's ``models_dir`` and ``smackctl models discover DIR``.

- A model is named from its file (``SmolLM2-135M-Instruct.Q4_1.gguf`` →
  ``SmolLM2-135M-Instruct.Q4_1``); a name another file took first gets ``-2``, ``-3``…
- A split model (``NAME-00001-of-00003.gguf`` …) is one model, its first part the file
  llama.cpp loads; a missing part is reported and the model left out.
- A multimodal projector (``mmproj`` in its name) is not a model: it goes with the models of
  its folder (``--mmproj`` for llama-server).
- Files with the same content (the same size, then the same sha256) are one model: the
  others are reported as duplicates.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from smackctl.catalog import known_sha256

__all__ = ["Found", "Scan", "model_name", "scan"]

_SPLIT = re.compile(r"^(?P<base>.+)-(?P<part>\d{5})-of-(?P<parts>\d{5})\.gguf$", re.I)
_BAD = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Found:
    name: str
    path: Path  # the file llama.cpp loads (a split model's first part)
    size: int  # all its parts
    parts: int = 1
    projector: Path | None = None


@dataclass
class Scan:
    found: list[Found] = field(default_factory=list)
    #: (the file left out, the model whose file has the same content)
    duplicates: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def model_name(stem: str) -> str:
    """A valid model name from a file's stem."""
    name = _BAD.sub("-", stem).lstrip("._-").replace("..", ".")[:64].rstrip("._-")
    return name or "model"


#: at most this many folders are walked (a models_dir of `/` must not walk the machine)
MAX_FOLDERS = 2000


def _gguf_files(folder: Path, out: Scan) -> list[Path]:
    """The .gguf files under ``folder``, hidden folders left out, at most MAX_FOLDERS walked."""
    found: list[Path] = []
    for n, (where, dirs, names) in enumerate(os.walk(folder)):
        if n >= MAX_FOLDERS:
            out.notes.append(f"more than {MAX_FOLDERS} folders under {folder}: the rest not read")
            break
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(where) / f for f in names if f.lower().endswith(".gguf")]
    return [p for p in found if p.is_file()]


def scan(
    folder: Path,
    taken: frozenset[str] | set[str] = frozenset(),
    known: frozenset[Path] = frozenset(),
) -> Scan:
    """The models under ``folder`` (recursively). ``taken``: names already in use;
    ``known``: files that are models already, kept when a copy of one appears."""
    out = Scan()
    if not folder.is_dir():
        out.notes.append(f"{folder} is not a folder")
        return out
    files = sorted(_gguf_files(folder, out))
    projectors = [p for p in files if "mmproj" in p.name.lower()]
    models: list[tuple[Path, str, int, int]] = []  # path, stem, size, parts
    for p in files:
        if p in projectors:
            continue
        split = _SPLIT.match(p.name)
        if split is None:
            models.append((p, p.stem, p.stat().st_size, 1))
            continue
        if int(split["part"]) != 1:
            continue  # counted with its first part
        n = int(split["parts"])
        width = len(split["part"])
        names = [f"{split['base']}-{i:0{width}d}-of-{split['parts']}.gguf" for i in range(1, n + 1)]
        missing = [x for x in names if not (p.parent / x).is_file()]
        if missing:
            out.notes.append(f"{p}: part(s) {', '.join(missing)} missing: left out")
            continue
        size = sum((p.parent / x).stat().st_size for x in names)
        models.append((p, split["base"], size, n))
    # the same content: hashed only where sizes collide
    by_size: dict[int, list[int]] = {}
    for i, (_, _, size, _) in enumerate(models):
        by_size.setdefault(size, []).append(i)
    same: dict[int, int] = {}  # index → index of the first with its content
    for group in by_size.values():
        if len(group) > 1:
            seen: dict[str, int] = {}
            group.sort(key=lambda i: models[i][0] not in known)  # a known file first
            for i in group:
                digest = known_sha256(models[i][0])  # a rescan hashes nothing again
                if digest in seen:
                    same[i] = seen[digest]
                else:
                    seen[digest] = i
    used = set(taken)
    named: dict[int, str] = {}
    for i, (path, stem, size, parts) in enumerate(models):
        if i in same:
            continue
        base = model_name(stem)
        name, k = base, 2
        while name in used:
            name, k = f"{base}-{k}", k + 1
        used.add(name)
        named[i] = name
        mine = [q for q in projectors if q.parent == path.parent]
        out.found.append(Found(name, path, size, parts, mine[0] if len(mine) == 1 else None))
        if len(mine) > 1:
            out.notes.append(
                f"{path.parent}: {len(mine)} projectors; name the one for {name} in the profile "
                "(`args: {mmproj: PATH}`)"
            )
    for i, first in same.items():
        out.duplicates.append((models[i][0], named[first]))
    return out
