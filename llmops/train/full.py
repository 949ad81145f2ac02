"""Full fine-tunes on several processes: FSDP2 (`fully_shard`) or DeepSpeed ZeRO-3, launched with torchrun.

`launch_full` writes the data and the config next to the run, starts one worker per rank with
`python -m torch.distributed.run`, streams their output to `<out>/train.log` and reads the result the rank-0
worker writes to `<out>/result.json`. The workers (`fsdp_worker`, `zero3_worker`) train with the same
completion-only loss as the adapter loop (llmops.train.loop).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from llmops.config import StrictModel, load_config
from llmops.data.schema import ChatExample
from llmops.errors import ConfigError, LlmopsError
from llmops.proc import tail
from llmops.train.config import Method, TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCH_DIR = REPO_ROOT / "configs" / "launch"
WORKERS = {Method.FULL_FSDP: "llmops.train.fsdp_worker", Method.FULL_ZERO3: "llmops.train.zero3_worker"}


class MixedPrecision(StrictModel):
    param_dtype: str = Field("auto", pattern="^(auto|bfloat16|float16|float32)$")
    reduce_dtype: str = Field("float32", pattern="^(bfloat16|float16|float32)$")


class FsdpLaunch(StrictModel):
    """configs/launch/fsdp.yaml: how FSDP2 distributes the model (every key documented in that file)."""

    backend: str = Field("auto", pattern="^(auto|nccl|gloo)$")
    reshard_after_forward: bool = True
    cpu_offload: bool = False
    mixed_precision: MixedPrecision = MixedPrecision()


@dataclass(frozen=True)
class FullResult:
    """What a full fine-tune produced.

    Attributes:
        model_dir: the consolidated model (safetensors + tokenizer), loadable with AutoModelForCausalLM.
        steps: optimizer steps run.
        losses: the training loss of each step (mean over ranks).
        seconds: wall time of the training steps (rank 0), without start-up and saving.
        per_rank_param_numel: parameter elements each rank held locally (its shard or partition).
        total_param_numel: parameter elements of the whole model.
        step_seconds: wall time of each step (rank 0).
        per_rank_peak_mem_bytes: each rank's peak GPU memory (torch.cuda.max_memory_allocated; 0 on CPU).
    """

    model_dir: Path
    steps: int
    losses: list[float]
    seconds: float
    per_rank_param_numel: list[int]
    total_param_numel: int
    step_seconds: tuple[float, ...] = ()
    per_rank_peak_mem_bytes: tuple[int, ...] = ()


def default_launch_config(cfg: TrainConfig) -> Path:
    """The launcher config a full method uses: `full.launch_config` if set, else the shipped one.

    Args:
        cfg: a train config with a full method.

    Returns:
        An existing file (relative paths are tried against the working directory, then the checkout).
    """
    full = cfg.resolved().full
    assert full is not None
    if full.launch_config is not None:
        p = full.launch_config
        for cand in (p, REPO_ROOT / p):
            if cand.is_file():
                return cand.resolve()
        raise ConfigError(f"full.launch_config: {p} does not exist",
                          "point it at a file like configs/launch/fsdp.yaml or configs/launch/zero3.json")
    if cfg.method is Method.FULL_FSDP:
        return LAUNCH_DIR / "fsdp.yaml"
    return LAUNCH_DIR / ("zero3_offload.json" if full.cpu_offload else "zero3.json")


def load_fsdp_launch(path: Path) -> FsdpLaunch:
    """Read and validate an FSDP launcher YAML.

    Args:
        path: e.g. configs/launch/fsdp.yaml.

    Returns:
        The validated settings.
    """
    return load_config(path, FsdpLaunch)


def load_zero3_launch(path: Path) -> dict[str, Any]:
    """Read a DeepSpeed JSON and check it is a ZeRO-3 config the HF Trainer can fill in.

    Args:
        path: e.g. configs/launch/zero3.json.

    Returns:
        The parsed JSON.
    """
    try:
        ds = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not a readable DeepSpeed JSON: {err}",
                          "fix the file or full.launch_config") from None
    stage = ds.get("zero_optimization", {}).get("stage")
    if stage != 3:
        raise ConfigError(f"{path}: zero_optimization.stage is {stage!r}, method full_zero3 needs 3",
                          "set \"zero_optimization\": {\"stage\": 3, ...}")
    if "train_batch_size" in ds:
        raise ConfigError(f"{path}: has a train_batch_size key",
                          "remove it: the Trainer derives it from hyper.batch_size, grad_accum and the rank count "
                          "(a fixed value breaks when full.nproc changes)")
    return dict(ds)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_full(cfg: TrainConfig, base_dir: Path, train: Sequence[ChatExample], out_dir: Path,
                timeout_s: float | None = None) -> FullResult:
    """Fully fine-tune the model in `base_dir` on `train` with FSDP2 or ZeRO-3 on `cfg.full.nproc` ranks.

    Args:
        cfg: train config; method full_fsdp or full_zero3 (`full:` defaults filled in when absent).
        base_dir: HF model directory (weights, config, tokenizer with chat template).
        train: the training examples.
        out_dir: run directory: train.jsonl, train_config.json, train.log, result.json and model/ go here.
        timeout_s: stop the workers and fail after this many seconds (None: no limit).

    Returns:
        The FullResult the rank-0 worker recorded.

    Raises:
        ConfigError: the method is not a full one, or the launcher config is invalid.
        LlmopsError: a worker failed or timed out (the message carries the end of train.log).
    """
    if cfg.method not in WORKERS:
        raise ConfigError(f"method {cfg.method.value} is not a full fine-tune",
                          "use full_fsdp or full_zero3 here; adapters train with llmops.train.adapters")
    if not train:
        raise LlmopsError("no training examples", "collect or curate data before fine-tuning")
    cfg = cfg.resolved()
    assert cfg.full is not None
    launch = default_launch_config(cfg)
    if cfg.method is Method.FULL_FSDP:
        load_fsdp_launch(launch)
    else:
        load_zero3_launch(launch)

    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / "train.jsonl"
    data.write_text("".join(ex.model_dump_json() + "\n" for ex in train))
    cfg_json = out_dir / "train_config.json"
    cfg_json.write_text(cfg.model_dump_json(indent=2))
    result_path = out_dir / "result.json"
    result_path.unlink(missing_ok=True)

    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={cfg.full.nproc}", "--nnodes=1",
            "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", WORKERS[cfg.method],
            "--config", str(cfg_json), "--base", str(base_dir), "--data", str(data), "--out", str(out_dir),
            "--launch", str(launch)]
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])))
    if cfg.method is Method.FULL_ZERO3:
        env.setdefault("DS_ACCELERATOR", "cuda" if _has_cuda() else "cpu")

    log = out_dir / "train.log"
    t0 = time.monotonic()
    with log.open("ab") as out:
        out.write(f"==== {time.strftime('%Y-%m-%dT%H:%M:%S')} start: {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # the launcher and its ranks: the session we started
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            raise LlmopsError(f"{cfg.method.value} fine-tune timed out after {timeout_s:.0f} s; end of {log}:\n"
                              f"{tail(log, 40)}", "raise the timeout or lower hyper.max_steps") from None
    if rc != 0 or not result_path.is_file():
        raise LlmopsError(
            f"{cfg.method.value} fine-tune failed (exit code {rc}, {time.monotonic() - t0:.0f} s); end of {log}:\n"
            f"{tail(log, 40)}",
            f"read {log}; the failing rank's traceback is above torchrun's summary")
    res = json.loads(result_path.read_text())
    return FullResult(model_dir=Path(res["model_dir"]), steps=int(res["steps"]),
                      losses=[float(x) for x in res["losses"]], seconds=float(res["seconds"]),
                      per_rank_param_numel=[int(x) for x in res["per_rank_param_numel"]],
                      total_param_numel=int(res["total_param_numel"]),
                      step_seconds=tuple(float(x) for x in res.get("step_seconds", ())),
                      per_rank_peak_mem_bytes=tuple(int(x) for x in res.get("per_rank_peak_mem_bytes", ())))


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def worker_args(argv: Sequence[str] | None = None) -> Any:
    """Parse the arguments `launch_full` passes to a worker module.

    Args:
        argv: command line without the program name (None: sys.argv[1:]).

    Returns:
        argparse namespace with config, base, data, out and launch (Paths).
    """
    import argparse

    ap = argparse.ArgumentParser(description="one rank of a full fine-tune (started by llmops.train.full)")
    for name in ("config", "base", "data", "out", "launch"):
        ap.add_argument(f"--{name}", type=Path, required=True)
    return ap.parse_args(argv)


def read_run(args: Any) -> tuple[TrainConfig, list[ChatExample]]:
    """The TrainConfig and examples a worker trains on (written by `launch_full`).

    Args:
        args: the namespace from `worker_args`.

    Returns:
        (config, examples).
    """
    cfg = TrainConfig.model_validate_json(Path(args.config).read_text())
    lines = Path(args.data).read_text().splitlines()
    return cfg, [ChatExample.model_validate_json(line) for line in lines if line.strip()]
