"""The base model's conversion is paid once per machine: a second call reuses the cached files, a cache whose
files no longer hash to what the conversion recorded is converted again, a failed conversion leaves nothing
that looks whole. The GGUF -> safetensors step itself is replaced by a small writer here (the real one takes
~20 s and runs in `make install` and every integration test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmops import basemodel


@pytest.fixture
def fake_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    gguf = tmp_path / "wheel" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + bytes(range(200)))
    calls: list[Path] = []

    def convert(_gguf: Path, out_dir: Path) -> None:
        calls.append(out_dir)
        (out_dir / "model.safetensors").write_bytes(b"weights")
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(basemodel, "find_gguf", lambda: gguf)
    monkeypatch.setattr(basemodel, "_convert", convert)
    monkeypatch.setenv("LLMOPS_CACHE_DIR", str(tmp_path / "cache"))
    return calls


def test_converted_once_then_reused(fake_gguf: list[Path], tmp_path: Path) -> None:
    first = basemodel.convert_base_model()
    assert first.path.parent == tmp_path / "cache" / "base"
    assert first.path.name.startswith("smollm2-135m-instruct-")
    second = basemodel.convert_base_model()
    assert len(fake_gguf) == 1 and second == first
    assert sorted(p.name for p in first.path.parent.iterdir()) == [first.path.name, first.path.name + ".converted"]


def test_a_tampered_cache_is_converted_again(fake_gguf: list[Path]) -> None:
    first = basemodel.convert_base_model()
    (first.path / "model.safetensors").write_bytes(b"bitrot")
    again = basemodel.convert_base_model()
    assert len(fake_gguf) == 2 and again.sha256 == first.sha256
    assert (again.path / "model.safetensors").read_bytes() == b"weights"


def test_a_failed_conversion_leaves_nothing_whole(fake_gguf: list[Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_gguf: Path, out_dir: Path) -> None:
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(basemodel, "_convert", broken)
    with pytest.raises(OSError, match="disk full"):
        basemodel.convert_base_model()
    assert list((tmp_path / "cache" / "base").iterdir()) == []
