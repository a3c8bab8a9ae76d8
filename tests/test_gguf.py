"""The header parser agrees with the gguf library, field by field, on real and tiny files."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from smackctl.errors import ModelLoadError
from smackctl.gguf import FILE_TYPES, read_info

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "models"


def library_view(path: Path) -> dict[str, object]:
    r = gguf.GGUFReader(str(path), "r")
    f = r.fields
    arch = f["general.architecture"].contents()

    def get(key: str) -> object:
        return f[key].contents() if key in f else None

    return {
        "architecture": arch,
        "name": get("general.name"),
        "context_length": get(f"{arch}.context_length"),
        "layers": get(f"{arch}.block_count"),
        "embedding_length": get(f"{arch}.embedding_length"),
        "heads": get(f"{arch}.attention.head_count"),
        "vocab_size": len(f["tokenizer.ggml.tokens"].data),
        "has_chat_template": "tokenizer.chat_template" in f,
        "end_token_ids": sorted(
            {
                int(get(f"tokenizer.ggml.{k}_token_id"))  # type: ignore[call-overload]
                for k in ("eos", "eot", "eom")
                if get(f"tokenizer.ggml.{k}_token_id") is not None
            }
        ),
        "parameter_count": get("general.parameter_count")
        or sum(int(t.n_elements) for t in r.tensors),
        "quantization": gguf.LlamaFileType(get("general.file_type"))
        .name.removeprefix("MOSTLY_")
        .removeprefix("ALL_"),
    }


def files(model_dir: Path) -> list[Path]:
    out = [model_dir / "tiny-a.gguf", model_dir / "tiny-b.gguf"]
    out += sorted(CACHE.glob("*.gguf"))  # SmolLM2 (and Gemma, when the benchmark pulled it)
    return out


def test_agrees_with_the_gguf_library(model_dir: Path, smollm2_file: Path) -> None:
    checked = 0
    for path in files(model_dir):
        ours = read_info(path).as_dict()
        for key, value in library_view(path).items():
            assert (list(ours[key]) if key == "end_token_ids" else ours[key]) == value, (
                path.name,
                key,
            )
        checked += 1
    assert checked >= 3


def test_file_type_names_match_the_library() -> None:
    for ft in gguf.LlamaFileType:
        if ft.value in FILE_TYPES:
            assert FILE_TYPES[ft.value] == ft.name.removeprefix("MOSTLY_").removeprefix("ALL_")


def test_real_model_fields(smollm2_file: Path) -> None:
    info = read_info(smollm2_file)
    assert (
        info.architecture,
        info.quantization,
        info.layers,
        info.heads,
        info.heads_kv,
        info.vocab_size,
        info.context_length,
    ) == ("llama", "Q4_1", 30, 9, 3, 49152, 8192)


def test_truncated_file_is_a_clear_error(smollm2_file: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smollm2_file.read_bytes()[:100_000])
    with pytest.raises(ModelLoadError) as exc:
        read_info(cut)
    assert "is not a readable GGUF file" in exc.value.message
