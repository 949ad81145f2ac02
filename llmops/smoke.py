"""The smoke journey: gateway completion, Prometheus metric, a deployed flow run reaching MLflow and S3."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx

from llmops.endpoints import Endpoints
from llmops.errors import LlmopsError, ServiceError
from llmops.prefect_api import PrefectApi
from llmops.stackconfig import backend_name

T = TypeVar("T")

Say = Callable[[str], None]


@dataclass(frozen=True)
class SmokeResult:
    answer: str
    completion_s: float
    gateway_requests: float
    flow_run_id: str
    flow_run_url: str
    mlflow_run_id: str
    s3_key: str


def chat(ep: Endpoints, question: str, max_tokens: int = 40) -> tuple[str, str]:
    """One chat completion through the gateway with the `openai` client; returns (answer, serving version)."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{ep.gateway_url}/v1", api_key="unused", max_retries=0, timeout=60)
    raw = client.chat.completions.with_raw_response.create(
        model=ep.model_name, messages=[{"role": "user", "content": question}], max_tokens=max_tokens,
        temperature=0)
    resp = raw.parse()
    return resp.choices[0].message.content or "", raw.headers.get("x-llmops-model-version", "")


def prom_query(ep: Endpoints, expr: str) -> float | None:
    """Instant query; the sum of the result vector, or None when it is empty."""
    r = httpx.get(f"{ep.prometheus_url}/api/v1/query", params={"query": expr}, timeout=10)
    r.raise_for_status()
    result = r.json()["data"]["result"]
    return sum(float(s["value"][1]) for s in result) if result else None


def wait_metric(ep: Endpoints, expr: str, minimum: float, timeout_s: float = 30) -> float:
    deadline = time.monotonic() + timeout_s
    value = None
    while time.monotonic() < deadline:
        value = prom_query(ep, expr)
        if value is not None and value >= minimum:
            return value
        time.sleep(0.5)
    raise ServiceError(f"Prometheus: `{expr}` is {value}, expected >= {minimum} within {timeout_s:.0f}s",
                       f"check the scrape targets at {ep.prometheus_url}/targets")


def run_smoke(ep: Endpoints, say: Say = print) -> SmokeResult:
    """Walk the smoke journey against a running stack; raise ServiceError at the first broken step."""
    t = time.monotonic()
    question = "What is the capital of France? Answer in one sentence."
    answer, version = chat(ep, question)
    completion_s = time.monotonic() - t
    say(f"  gateway: {question!r} -> {answer!r} (v{version}, {completion_s:.2f}s)")
    if "paris" not in answer.lower():
        raise ServiceError(f"the model's answer {answer!r} does not mention Paris", "read the node log")
    backend = backend_name(ep.model_name)
    n = wait_metric(ep, f'haproxy_backend_http_requests_total{{proxy="{backend}"}}', 1)
    say(f"  prometheus: haproxy_backend_http_requests_total{{proxy={backend!r}}} = {n:g}")

    api = PrefectApi(ep.prefect_api_url, ep.prefect_ui_url)
    run_id = api.run_deployment("smoke", "smoke", {"message": "smoke journey"})
    say(f"  prefect: flow run {api.run_link(run_id)}")
    st = api.wait(run_id, timeout_s=180)
    if st.state != "COMPLETED":
        raise ServiceError(f"smoke flow run {st.name} ended {st.state}: {st.message}",
                           f"open {api.run_link(run_id)} for its logs")

    from mlflow import MlflowClient

    client = MlflowClient(ep.mlflow_url)
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id], f"tags.`prefect.flow_run_id` = '{run_id}'") if exp else []
    if not runs:
        raise ServiceError(f"no MLflow run tagged with flow run {run_id}", f"see {api.run_link(run_id)}")
    key = f"smoke/{run_id}.json"
    ep.s3_client().head_object(Bucket="llmops", Key=key)
    say(f"  mlflow: run {runs[0].info.run_id} in experiment 'smoke'; s3: s3://llmops/{key}")
    return SmokeResult(answer, completion_s, n, run_id, api.run_link(run_id), runs[0].info.run_id, key)


def run_training(ep: Endpoints, config: Path, say: Say = print, timeout_s: float = 1800) -> dict[str, str]:
    """Run the train-pipeline deployment and report the registered version, its scores and the gate verdict."""
    from mlflow import MlflowClient

    api = PrefectApi(ep.prefect_api_url, ep.prefect_ui_url)
    t = time.monotonic()
    run_id = api.run_deployment("train-pipeline", "train-pipeline", {"config": str(config.resolve())})
    say(f"  prefect: flow run {api.run_link(run_id)}")
    st = api.wait(run_id, timeout_s=timeout_s)
    if st.state != "COMPLETED":
        raise ServiceError(f"train-pipeline run {st.name} ended {st.state}: {st.message}",
                           f"open {api.run_link(run_id)} for its logs")
    client = MlflowClient(ep.mlflow_url)
    versions = client.search_model_versions(f"name = '{ep.model_name}'", order_by=["version_number DESC"],
                                            max_results=1)
    mv = client.get_model_version(ep.model_name, versions[0].version)  # search results carry no aliases
    tags = dict(mv.tags)
    say(f"  registered {ep.model_name} v{mv.version} in {time.monotonic() - t:.0f}s: exact match "
        f"{tags.get('llmops.eval.exact_match')}, leakage {tags.get('llmops.eval.leakage')}, "
        f"gate {tags.get('llmops.gate')}; aliases {list(mv.aliases)}")
    say(f"  mlflow: {ep.mlflow_url}/#/models/{ep.model_name}/versions/{mv.version}")
    return tags


def run_rollout(ep: Endpoints, version: str, say: Say = print, rps: float = 3.0, timeout_s: float = 900
                ) -> dict[str, object]:
    """Canary `version` through the rollout deployment while steady user load runs through the gateway (a
    canary is judged on real traffic); reports the outcome and the load's failures."""
    import threading

    from llmops.loadgen import schedule
    from llmops.loadgen.runner import run_load
    from llmops.registry import MlflowRegistry

    version = MlflowRegistry(ep.mlflow_url).resolve(ep.model_name, version).version  # alias -> number, or a clear error
    stop = threading.Event()
    load: dict[str, object] = {}
    worker = threading.Thread(target=lambda: load.update(run_load(
        f"{ep.gateway_url}/v1", ep.model_name, schedule.steady(rps, timeout_s, max_tokens=8), stop=stop)))
    api = PrefectApi(ep.prefect_api_url, ep.prefect_ui_url)
    t = time.monotonic()
    worker.start()
    try:
        run_id = api.run_deployment("rollout", "rollout", {"version": version})
        say(f"  prefect: flow run {api.run_link(run_id)} (steady load {rps:g} req/s meanwhile)")
        st = api.wait(run_id, timeout_s=timeout_s)
    finally:
        stop.set()
        worker.join()
    tags = MlflowRegistry(ep.mlflow_url).resolve(ep.model_name, version).tags
    say(f"  v{version}: {tags.get('rollout', st.state)} in {time.monotonic() - t:.0f}s "
        f"{tags.get('rollout_reason', '')}".rstrip())
    say(f"  load meanwhile: {load.get('ok')} ok, {load.get('failed')} failed, by version {load.get('by_version')}")
    if st.state != "COMPLETED":
        raise ServiceError(f"rollout run {st.name} ended {st.state}: {st.message}", f"see {api.run_link(run_id)}")
    return {"outcome": tags.get("rollout"), **load}


def run_burst(ep: Endpoints, say: Say = print, base_rps: float = 0.5, burst_rps: float = 10.0, burst_s: float = 25,
              duration_s: float = 50, settle_timeout_s: float = 240, min_replicas: int = 2) -> dict[str, object]:
    """A burst through the gateway: the alerts fire, the `scale` flow grows the pool; after the burst the scheduled
    `reconcile` drains it back to `min_replicas`. Prints the pool's timeline as it changes. Another tenant's pool, if
    the stack has one, serves its own steady load meanwhile and must come out untouched."""
    import threading

    from llmops.loadgen import schedule
    from llmops.loadgen.runner import run_load
    from llmops.pool.state import pool_store
    from llmops.stackconfig import load_effective_config

    store = pool_store(ep.state_dir, load_effective_config(ep.state_dir).pool_database)

    def sizes() -> tuple[int, int]:
        return store.read().serving_and_standby(ep.model_name)

    before = len(store.read().scaling_of(ep.model_name).actions)
    others = {(n.model, n.name, n.version) for n in store.read().nodes.values() if n.model != ep.model_name}
    other_model = min((m for m, _, _ in others), default="")
    load: dict[str, object] = {}
    other_load: dict[str, object] = {}
    arrivals = schedule.burst(base_rps, burst_rps, duration_s, 5.0, burst_s, max_tokens=16)
    worker = threading.Thread(target=lambda: load.update(run_load(f"{ep.gateway_url}/v1", ep.model_name, arrivals,
                                                                  timeout_s=300)))
    neighbour = threading.Thread(target=lambda: other_load.update(run_load(
        f"{ep.gateway_url}/v1", other_model, schedule.steady(0.3, duration_s, max_tokens=8), timeout_s=300)))
    t0 = time.monotonic()
    worker.start()
    if other_model:
        neighbour.start()
        say(f"  meanwhile tenant pool {other_model} ({len(others)} node(s)) gets its own steady 0.3 req/s")
    last, peak = sizes(), sizes()[0]
    say(f"  t=+0s  serving {last[0]}, standby {last[1]}; burst {burst_rps:g} req/s from t=+5s for {burst_s:g}s")
    while worker.is_alive() or (time.monotonic() - t0 < duration_s + settle_timeout_s and sizes()[0] > min_replicas):
        now = sizes()
        if now != last:
            say(f"  t=+{time.monotonic() - t0:.0f}s  serving {last[0]} -> {now[0]}, standby {last[1]} -> {now[1]}")
            last, peak = now, max(peak, now[0])
        time.sleep(1)
    worker.join()
    if other_model:
        neighbour.join()
        after = {(n.model, n.name, n.version) for n in store.read().nodes.values() if n.model != ep.model_name}
        lat_o = other_load.get("latency_s")
        say(f"  tenant pool {other_model}: {other_load.get('ok')} ok, {other_load.get('failed')} failed, p95 "
            f"{lat_o.get('p95') if isinstance(lat_o, dict) else None} s; its nodes "
            f"{'unchanged' if after == others else f'CHANGED: {sorted(others)} -> {sorted(after)}'}")
        if after != others:
            raise LlmopsError(f"the burst on {ep.model_name} changed another tenant's nodes: {sorted(others)} -> "
                              f"{sorted(after)}", "tenant pools must be isolated; see the scale flow runs")
    actions = store.read().scaling_of(ep.model_name).actions[before:]
    for a in actions:
        reasons = a.get("reasons")
        why = "; ".join(str(r) for r in reasons) if isinstance(reasons, list) else ""
        say(f"  {a['action']}: {a['current']} -> {a['desired']} ({a['trigger']}; {why})")
    lat = load.get("latency_s")
    p95 = lat.get("p95") if isinstance(lat, dict) else None
    say(f"  load: {load.get('ok')} ok, {load.get('failed')} failed, p95 {p95} s; "
        f"pool peaked at {peak} serving, now {sizes()[0]}")
    return {"peak_serving": peak, "final_serving": sizes()[0], "actions": actions, **load,
            "other_tenant": {"model": other_model, **other_load} if other_model else None}


REPAIR_POLICY = "refund-window"
REPAIR_NEW_ANSWER = "Quillstack refunds annual plans within 30 days of purchase; monthly plans are not refundable."


def answer_with_id(ep: Endpoints, question: str, max_tokens: int = 48, model: str = "") -> tuple[str, str, str]:
    """One chat completion through the gateway to `model` (default: the stack's): (answer, request id, serving
    version)."""
    r = httpx.post(f"{ep.gateway_url}/v1/chat/completions", timeout=120, json={
        "model": model or ep.model_name, "max_tokens": max_tokens, "temperature": 0,
        "messages": [{"role": "user", "content": question}]})
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"], r.headers["x-request-id"], r.headers["x-llmops-model-version"]


def send_feedback(ep: Endpoints, request_id: str, verdict: str, correction: str | None = None
                  ) -> dict[str, object]:
    """POST /v1/feedback; returns the receiver's answer (where the verdict was stored)."""
    body: dict[str, object] = {"request_id": request_id, "verdict": verdict}
    if correction:
        body["correction"] = correction
    r = None
    for _ in range(20):  # the node appends the answer to the serving log as the response ends
        r = httpx.post(f"{ep.receiver_url}/v1/feedback", json=body, timeout=10)
        if r.status_code != 404:
            break
        time.sleep(0.3)
    if r is None or r.status_code != 202:
        raise LlmopsError(f"feedback refused: {r.status_code if r else '-'} {r.text if r else ''}",
                          "check the receiver's log (`llmops stack logs receiver`)")
    return dict(r.json())


def _concurrently(fn: Callable[[str], T], items: Sequence[str], workers: int = 4) -> list[T]:
    """`fn` over `items` from several users at once (results in order; the first error raises). Four at a time: a
    third of what the default pool's nodes take at their target concurrency, so the questions raise no scale-out."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items)))) as ex:
        return list(ex.map(fn, items))


def run_regression(ep: Endpoints, say: Say = print, asked: int = 16, unseen: int = 8, trigger_timeout_s: float = 120,
                   repair_timeout_s: float = 900, load_rps: float = 3.0) -> dict[str, object]:
    """The policy changes: users ask about it, mark the old answers bad with the new one as correction; the
    RegressionDetected alert fires, the `repair` deployment fixes and canaries; then phrasings no correction used
    are asked again. Returns the timings, the new champion and its exact match on those phrasings."""
    from datetime import UTC, datetime, timedelta

    from llmops.data.curated import DEFAULT_DIR, load_curated
    from llmops.registry import MlflowRegistry

    policy = next(p for p in load_curated(DEFAULT_DIR).policies if p.id == REPAIR_POLICY)
    questions = policy.train_questions[:asked]
    held = [*policy.heldout_questions, *policy.train_questions[asked:asked + unseen]]
    reg = MlflowRegistry(ep.mlflow_url)
    before = reg.resolve(ep.model_name, "champion").version
    t_created = datetime.now(UTC) - timedelta(seconds=2)
    say(f"  the {REPAIR_POLICY} policy changed to: {REPAIR_NEW_ANSWER}")

    def old_answer_rated_bad(q: str) -> None:
        _, rid, _ = answer_with_id(ep, q)
        send_feedback(ep, rid, "bad", REPAIR_NEW_ANSWER)

    _concurrently(old_answer_rated_bad, questions)  # users ask at the same time, not one after another
    say(f"  {len(questions)} users got the old answer from v{before} and sent a bad verdict with the correction")
    api = PrefectApi(ep.prefect_api_url, ep.prefect_ui_url)
    t0 = time.monotonic()
    fired_at: float | None = None
    ratio_fired: float | None = None
    run: dict[str, object] | None = None
    while time.monotonic() - t0 < trigger_timeout_s and run is None:
        if fired_at is None and prom_query(ep, 'ALERTS{alertname="RegressionDetected",alertstate="firing"}'):
            fired_at = time.monotonic()
            ratio_fired = prom_query(ep, f'llmops:pool_bad_feedback_ratio{{model="{ep.model_name}"}}')
            say(f"  t=+{fired_at - t0:.0f}s RegressionDetected firing (bad ratio {ratio_fired})")
        runs = [x for x in api.flow_runs({"flows": {"name": {"any_": ["repair"]}}, "sort": "EXPECTED_START_TIME_ASC",
                                          "limit": 50}) if datetime.fromisoformat(str(x["created"])) >= t_created]
        run = runs[0] if runs else None
        time.sleep(1)
    if run is None:
        raise LlmopsError(f"no repair flow run within {trigger_timeout_s:.0f} s of the feedback",
                          "check the RegressionDetected rule in Prometheus and the receiver's log")
    say(f"  t=+{time.monotonic() - t0:.0f}s repair flow run: {api.run_link(str(run['id']))}")
    # users keep asking while the repair runs: once the fix is registered as challenger its canary needs traffic
    # to be judged (without any it fails safe), so steady load starts then and stops when the repair run ends
    import threading

    from llmops.loadgen import schedule
    from llmops.loadgen.runner import run_load

    stop, load, worker = threading.Event(), {}, None
    deadline = time.monotonic() + repair_timeout_s
    while True:
        st = api.state(str(run["id"]))
        if st.state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") or time.monotonic() > deadline:
            break
        if worker is None:
            try:
                ch = reg.resolve(ep.model_name, "challenger")
            except LlmopsError:
                ch = None
            tags = ch.tags if ch is not None else {}
            if ch is not None and tags.get("llmops.repair") == "true" and tags.get("llmops.parent_version") == before:
                say(f"  t=+{time.monotonic() - t0:.0f}s repair v{ch.version} passed its gate; canary under steady "
                    f"load {load_rps:g} req/s")
                worker = threading.Thread(target=lambda: load.update(run_load(
                    f"{ep.gateway_url}/v1", ep.model_name, schedule.steady(load_rps, repair_timeout_s, max_tokens=8),
                    stop=stop)), daemon=True)
                worker.start()
        time.sleep(2)
    stop.set()
    if worker is not None:
        worker.join(timeout=60)
    if st.state not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
        raise LlmopsError(f"the repair run did not finish within {repair_timeout_s:.0f} s",
                          f"follow it in the Prefect UI: {api.run_link(str(run['id']))}")
    fixed_at = time.monotonic()
    champion = reg.resolve(ep.model_name, "champion")
    say(f"  t=+{fixed_at - t0:.0f}s repair run {st.state}; champion v{before} -> v{champion.version}")
    if champion.version == before:
        latest = max(reg.client.search_model_versions(f"name = '{ep.model_name}'"), key=lambda v: int(v.version))
        why = latest.tags.get("llmops.gate_reason") or latest.tags.get("rollout_reason") or "see the repair run"
        raise LlmopsError(f"the repair did not replace v{before}: v{latest.version} "
                          f"{'failed its gate' if latest.tags.get('llmops.gate') == 'fail' else 'was not promoted'}: "
                          f"{why}", f"open the repair run: {api.run_link(str(run['id']))}")
    if fired_at is not None:
        say(f"  alert -> fixed version at 100%: {fixed_at - fired_at:.0f}s")
    def ask_and_rate(q: str) -> tuple[str, str, str, bool]:
        answer, rid, version = answer_with_id(ep, q)
        good = " ".join(answer.split()) == REPAIR_NEW_ANSWER
        send_feedback(ep, rid, "good" if good else "bad", None if good else REPAIR_NEW_ANSWER)
        return q, answer, version, good

    answers = _concurrently(ask_and_rate, held)
    em = sum(a[3] for a in answers) / len(answers)
    time.sleep(6)  # scraped and recorded
    ratio_after = prom_query(ep, f'llmops:pool_bad_feedback_ratio{{model="{ep.model_name}"}}')
    say(f"  {len(held)} phrasings no correction used: exact match {em:.2f}; bad-feedback ratio "
        f"{ratio_fired} -> {ratio_after}")
    return {"run_state": st.state, "run_id": run["id"], "champion_before": before, "champion_after": champion.version,
            "canary_load": {k: load.get(k) for k in ("requests", "ok", "failed")},
            "champion_tags": champion.tags, "heldout_exact_match": em, "answers": answers,
            "alert_fired": fired_at is not None, "ratio_when_fired": ratio_fired, "ratio_after": ratio_after,
            "alert_to_fixed_s": round(fixed_at - (fired_at or t0), 1)}
