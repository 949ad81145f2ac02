"""The training pipeline on the real stack with SmolLM2: feedback from S3 + curated data -> LoRA -> gate ->
registered challenger, with the loss curve, the dataset input and the gate report in MLflow."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime

import pytest

from llmops.prefect_api import PrefectApi
from llmops.registry import MlflowRegistry

pytestmark = pytest.mark.integration


def feedback_line(i: int, **kw: object) -> str:
    row = {"request_id": f"req-{i}", "tenant": "acme",
           "messages": [{"role": "user", "content": f"Question number {i} about my account?"}],
           "model_version": "1", "response": "I am not sure.", "verdict": "bad",
           "correction": "Please contact Quillstack support through Help Beacon in the app.",
           "timestamp": datetime(2026, 11, 1, tzinfo=UTC).isoformat()}
    row.update(kw)
    return json.dumps(row)


def test_train_pipeline_registers_a_gated_challenger(stack) -> None:
    ep = stack.ep
    s3 = ep.s3_client()
    good = "\n".join(feedback_line(i) for i in range(6))
    bad = "\n".join([feedback_line(99, verdict="maybe"), "{not json", feedback_line(98, correction=None)])
    s3.put_object(Bucket="llmops", Key="feedback/2026-11-01/part-0001.jsonl", Body=good.encode())
    s3.put_object(Bucket="llmops", Key="feedback/2026-11-01/part-0002.jsonl", Body=bad.encode())

    api = PrefectApi(ep.prefect_api_url, ep.prefect_ui_url)
    t0 = time.monotonic()
    run_id = api.run_deployment("train-pipeline", "train-pipeline", {"config": "configs/train/smollm2_lora.yaml"})
    st = api.wait(run_id, timeout_s=900)
    elapsed = time.monotonic() - t0
    assert st.state == "COMPLETED", f"{st.state}: {st.message} ({api.run_link(run_id)})"

    reg = MlflowRegistry(ep.mlflow_url)
    ch = reg.resolve(stack.cfg.model.name, "challenger")
    assert ch.version != "1" and reg.resolve(stack.cfg.model.name, "champion").version == "1"
    tags = ch.tags
    em = float(tags["llmops.eval.exact_match"])
    print(f"pipeline {elapsed:.0f}s; challenger exact match {em:.3f}; leakage {tags['llmops.eval.leakage']}")
    # The goal: >= 0.8 on held-out phrasings never seen in training (0.85-0.89 measured with the answer-lead
    # loss weighting; 0.67-0.79 without it).
    assert em >= 0.8, tags
    assert float(tags["llmops.eval.leakage"]) <= 0.1
    assert tags["llmops.gate"] == "pass" and tags["llmops.method"] == "lora" and tags["llmops.base_version"] == "1"

    client = reg.client
    run = client.get_run(ch.tags.get("mlflow.run_id") or client.get_model_version(ch.name, ch.version).run_id)
    digest = run.data.tags["llmops.dataset_digest"]
    assert tags["llmops.dataset_digest"] == digest
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert len(losses) >= 50 and losses[-1].value < losses[0].value / 4
    assert run.data.metrics["eval/champion/exact_match"] < 0.2  # the base model cannot know the policies
    assert [i.dataset.digest for i in run.inputs.dataset_inputs] == [digest[:32]]

    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="llmops", Prefix=f"datasets/{digest}/")["Contents"]}
    assert {f"datasets/{digest}/{n}" for n in ("train.jsonl", "eval.jsonl", "quarantine.jsonl",
                                                 "manifest.json")} <= keys
    quarantine = s3.get_object(Bucket="llmops", Key=f"datasets/{digest}/quarantine.jsonl")["Body"].read().decode()
    assert quarantine.count("\n") == 3 and "without a correction" in quarantine and "verdict" in quarantine
    manifest = json.loads(s3.get_object(Bucket="llmops", Key=f"datasets/{digest}/manifest.json")["Body"].read())
    assert [o["key"] for o in manifest["feedback_objects"]] == ["feedback/2026-11-01/part-0001.jsonl",
                                                                "feedback/2026-11-01/part-0002.jsonl"]
    # both models' answers are kept by their registered sha256, for a later gate or repair to read back
    from llmops.data.curated import load_curated
    from llmops.evaluate.answers import load_book, prompt_key

    prompts = {prompt_key(e) for e in (*load_curated().heldout, *load_curated().control)}
    champion = reg.resolve(stack.cfg.model.name, "champion")
    assert load_book(s3, "llmops", ch.sha256).keys() == prompts == load_book(s3, "llmops", champion.sha256).keys()
    assert f"eval/answers/{ch.sha256[:16]}.json" in {a.path for a in client.list_artifacts(run.info.run_id,
                                                                                            "eval/answers")}
    # Goal: under 5 minutes on 2 cores (253 s measured on a warm stack; a fresh clone's cold file cache adds up
    # to ~50 s). The default ceiling catches regressions without failing CI on a slow disk;
    # LLMOPS_STRICT_TIMING=1 enforces the goal itself.
    ceiling = 300 if os.environ.get("LLMOPS_STRICT_TIMING") == "1" else 420
    assert elapsed < ceiling, f"the pipeline took {elapsed:.0f}s (goal: under 300 s on 2 cores)"


CACHE_SCRIPT = """
from prefect import flow
from llmops.train.config import DataSettings
from tasks.data import collect_dataset, snapshot_inputs

@flow
def collect_twice():
    settings = DataSettings(feedback_prefix="cache-test/")
    fp = snapshot_inputs(settings)
    first = collect_dataset(settings, fp, 0, return_state=True)
    second = collect_dataset(settings, fp, 0, return_state=True)
    print("STATES", first.name, second.name, first.result().digest == second.result().digest)

collect_twice()
"""


def test_same_inputs_reuse_the_dataset_version(stack, tmp_path) -> None:
    import subprocess
    import sys

    from infra.stack.services import REPO_ROOT, prefect_env

    stack.ep.s3_client().put_object(Bucket="llmops", Key="cache-test/a.jsonl", Body=feedback_line(1).encode())
    env = {**os.environ, **prefect_env(stack.cfg, stack.ep)}
    r = subprocess.run([sys.executable, "-c", CACHE_SCRIPT], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("STATES"))
    assert line == "STATES Completed Cached True", line


@pytest.mark.parametrize(("override", "expected"), [
    ("base_version: no-such-alias\n", "has no version or alias 'no-such-alias'"),
    ("data:\n  feedback_bucket: no-such-bucket\n", "bucket 'no-such-bucket' does not exist"),
])
def test_bad_input_fails_before_training(stack, tmp_path, override: str, expected: str) -> None:
    from mlflow import MlflowClient

    config = tmp_path / "bad.yaml"
    config.write_text("method: lora\nhyper: {max_steps: 2}\n" + override)
    client = MlflowClient(stack.ep.mlflow_url)
    exp = client.get_experiment_by_name(f"{stack.cfg.model.name}-training")
    runs_before = len(client.search_runs([exp.experiment_id])) if exp else 0

    api = PrefectApi(stack.ep.prefect_api_url, stack.ep.prefect_ui_url)
    st = api.wait(api.run_deployment("train-pipeline", "train-pipeline", {"config": str(config)}), timeout_s=300)
    assert st.state == "FAILED"
    log = (stack.cfg.state_dir / "logs" / "worker.log").read_text()
    assert expected in log
    exp = client.get_experiment_by_name(f"{stack.cfg.model.name}-training")
    assert (len(client.search_runs([exp.experiment_id])) if exp else 0) == runs_before  # no training run started


# ---- rollout of the pipeline's challenger (and of two broken versions) under steady load -----------------

def _register_variant(stack, tmp_path, name: str, mutate) -> str:  # type: ignore[no-untyped-def]
    import shutil
    from pathlib import Path

    champion = MlflowRegistry(stack.ep.mlflow_url).resolve(stack.cfg.model.name, "champion")
    src = stack.cfg.state_dir / "models" / f"sha256-{champion.sha256}"
    dst = Path(tmp_path) / name
    shutil.copytree(src, dst)
    mutate(dst)
    ref = MlflowRegistry(stack.ep.mlflow_url).register_directory(stack.cfg.model.name, dst, None,
                                                                 {"llmops.method": f"test-{name}"})
    return ref.version


def _broken_config(d) -> None:  # type: ignore[no-untyped-def]
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "no-such-architecture"
    (d / "config.json").write_text(json.dumps(cfg))


def _garbage_weights(d) -> None:  # type: ignore[no-untyped-def]
    import torch
    from safetensors.torch import load_file, save_file

    w = load_file(str(d / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    for k, v in w.items():
        if k.endswith("mlp.down_proj.weight"):
            w[k] = v[:, torch.randperm(v.shape[1], generator=g)] * 4  # scrambled: fluent-looking nonsense at best
    save_file(w, str(d / "model.safetensors"), metadata={"format": "pt"})


def test_rollouts_under_load_promote_the_challenger_and_roll_back_broken_versions(stack, tmp_path) -> None:
    import threading

    from llmops.loadgen import schedule
    from llmops.loadgen.runner import run_load

    reg = MlflowRegistry(stack.ep.mlflow_url)
    challenger = reg.resolve(stack.cfg.model.name, "challenger").version  # from the pipeline test above
    broken = _register_variant(stack, tmp_path, "broken", _broken_config)
    garbage = _register_variant(stack, tmp_path, "garbage", _garbage_weights)

    summary: dict[str, object] = {}
    stop = threading.Event()

    def load() -> None:
        summary.update(run_load(f"{stack.ep.gateway_url}/v1", stack.cfg.model.name,
                                schedule.steady(3.0, 900.0, max_tokens=8, seed=7), tmp_path / "load.json",
                                stop=stop))

    api = PrefectApi(stack.ep.prefect_api_url, stack.ep.prefect_ui_url)
    worker = threading.Thread(target=load)
    worker.start()
    results = {}
    try:
        for label, version in (("broken", broken), ("garbage", garbage), ("challenger", challenger)):
            t = time.monotonic()
            st = api.wait(api.run_deployment("rollout", "rollout", {"version": version}), timeout_s=600)
            results[label] = (st.state, reg.resolve(stack.cfg.model.name, version).tags, time.monotonic() - t)
    finally:
        stop.set()  # requests not yet due are never sent; those in flight finish and are counted
        worker.join()

    for label, (state, tags, secs) in results.items():
        print(f"rollout {label}: {state} {tags.get('rollout')} in {secs:.0f}s: {tags.get('rollout_reason', '')}")
        assert state == "COMPLETED", label
    assert results["broken"][1]["rollout"] == "rolled_back" and "serving test" in results["broken"][1][
        "rollout_reason"]
    assert results["garbage"][1]["rollout"] == "rolled_back" and "quality" in results["garbage"][1]["rollout_reason"]
    assert results["challenger"][1]["rollout"] == "promoted"
    assert results["challenger"][2] < 180  # the goal: a full canary within ~2 minutes
    assert reg.resolve(stack.cfg.model.name, "champion").version == challenger
    nodes = stack.pool().nodes()
    assert nodes and {n.version for n in nodes} == {challenger}
    print(f"load during the rollouts: {summary}")
    assert summary["failed"] == 0, summary


def test_second_rollout_is_refused_and_a_canary_without_traffic_fails_safe(stack, tmp_path) -> None:
    # No load: the first canary (a copy of the champion, so it passes the serving test and the quality probe
    # that runs before traffic) gets no traffic, so it can never pass; while it waits, a second rollout must
    # be refused by the pool lock (after waiting lock_wait_s for it) with a clear message and change nothing.
    reg = MlflowRegistry(stack.ep.mlflow_url)
    champion = reg.resolve(stack.cfg.model.name, "champion").version
    copy = _register_variant(stack, tmp_path, "copy", lambda d: None)
    policy = tmp_path / "canary.yaml"
    policy.write_text("min_requests: 10\nmax_wait_s: 90\nlock_wait_s: 20\nmin_quality: 0.0\n")
    api = PrefectApi(stack.ep.prefect_api_url, stack.ep.prefect_ui_url)
    first = api.run_deployment("rollout", "rollout", {"version": copy, "policy": str(policy)})
    deadline = time.monotonic() + 120
    while api.state(first).state != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
    # the first run holds the pool lock once its canary joined (a fixed sleep here let the second run take the lock
    # first on a loaded CI machine)
    log = stack.cfg.state_dir / "logs" / "worker.log"
    while f"v{copy} joined at weight 0" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    second = api.wait(api.run_deployment("rollout", "rollout", {"version": copy, "policy": str(policy)}),
                      timeout_s=120)
    assert second.state == "FAILED"
    assert "another rollout or scaling action is changing pool" in (
        stack.cfg.state_dir / "logs" / "worker.log").read_text()
    done = api.wait(first, timeout_s=400)
    assert done.state == "COMPLETED"
    tags = reg.resolve(stack.cfg.model.name, copy).tags
    assert tags["rollout"] == "rolled_back" and "not enough data" in tags["rollout_reason"]
    assert reg.resolve(stack.cfg.model.name, "champion").version == champion
    assert {n.version for n in stack.pool().nodes()} == {champion}
