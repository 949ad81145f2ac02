"""infra/k8s, offline: every manifest passes the Kubernetes OpenAPI schema in strict mode (an unknown field is an
error; the schemas ship with kubernetes-validate), the references between the manifests hold, the configs they
carry pass their own tools (haproxy -c, promtool, amtool), and the work-pool templates render to valid Jobs.
No cluster is involved: this proves the manifests well-formed and consistent, not that they run."""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prefect.server.schemas.actions import validate_base_job_template
from prefect.utilities.templating import apply_values

from infra.k8s.render_rules import render
from llmops.stackconfig import load_stack_config

try:
    import kubernetes_validate
except ImportError as err:  # a missing validator must fail the suite, not skip it
    raise ImportError("kubernetes-validate is missing: install the dev extra (`pip install -e '.[dev]'`)") from err

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
# The oldest and the newest Kubernetes minor versions checked; kubernetes-validate ships both schemas.
K8S_VERSIONS = ("1.31", "1.37")
KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())
MANIFESTS = KUSTOMIZATION["resources"]
DOCS = [(name, doc) for name in MANIFESTS for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]
TEMPLATES = sorted((K8S / "work-pools").glob("*.json"))
# Secrets the user creates (README.md); secret.example.yaml names each one and its keys.
USER_SECRETS = {d["metadata"]["name"]: set(d["stringData"])
                for d in yaml.safe_load_all((K8S / "secret.example.yaml").read_text())}
WORKLOADS = ("Deployment", "StatefulSet")


def schema_error(doc: dict[str, Any], version: str) -> str | None:
    """The first schema violation of `doc` (strict: unknown fields count), or None."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
    except kubernetes_validate.SchemaNotFoundError as e:
        return e.message
    return None


def of_kind(*kinds: str) -> list[dict[str, Any]]:
    return [d for _, d in DOCS if d["kind"] in kinds]


def named(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in of_kind(kind) if d["metadata"]["name"] == name]
    return doc


def container(workload: str) -> dict[str, Any]:
    return named("Deployment", workload)["spec"]["template"]["spec"]["containers"][0]


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def rendered_job(template: dict[str, Any]) -> dict[str, Any]:
    """The Job the Kubernetes worker submits for one flow run: the variables' defaults plus what Prefect and the
    deployment set per run, applied with Prefect's own templating (a variable left unset drops its key); env and
    the command become lists, as the worker does."""
    props = template["variables"]["properties"]
    per_run = {"name": "serve-node-1a2b", "command": "prefect flow-run execute", "model_version": "3",
               "labels": {"prefect.io/flow-run-id": "0b8f4c52-7a0e-4f1b-9d55-3c1e2f6a9b10"}}
    values = {k: p["default"] for k, p in props.items() if p.get("default") is not None}
    values |= {k: v for k, v in per_run.items() if k in props}
    config = apply_values(copy.deepcopy(template["job_configuration"]), values)
    assert "{{" not in json.dumps(config), config
    job = config["job_manifest"]
    (c,) = job["spec"]["template"]["spec"]["containers"]
    c["env"] = [{"name": k, "value": v} for k, v in config["env"].items()]
    c["args"] = shlex.split(c["args"])
    return job


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert sorted(MANIFESTS) == sorted(on_disk)
    assert KUSTOMIZATION["namespace"] == "llmops"
    assert all(d["metadata"].get("namespace") == "llmops" for _, d in DOCS if d["kind"] != "Namespace")


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("manifest", MANIFESTS)
def test_every_document_passes_the_kubernetes_schema(manifest: str, version: str) -> None:
    errors = [f"{manifest}: {d['kind']}/{d['metadata']['name']}: {err}"
              for name, d in DOCS if name == manifest and (err := schema_error(d, version))]
    assert not errors, "\n".join(errors)


def _broken(change: str) -> dict[str, Any]:
    doc = copy.deepcopy(named("Deployment", "haproxy"))
    c = doc["spec"]["template"]["spec"]["containers"][0]
    if change == "replicas":
        doc["spec"]["replicas"] = "two"
    elif change == "typo":
        c["imagePulPolicy"] = c.pop("image")
    else:
        del doc["spec"]["selector"]
    return doc


@pytest.mark.parametrize(("change", "expected"), [
    ("replicas", "'two' is not of type 'integer'"),
    ("typo", "'imagePulPolicy' was unexpected"),
    ("no-selector", "'selector' is a required property"),
])
def test_a_broken_document_fails_the_same_check(change: str, expected: str) -> None:
    assert schema_error(named("Deployment", "haproxy"), K8S_VERSIONS[0]) is None
    err = schema_error(_broken(change), K8S_VERSIONS[0])
    assert err is not None and expected in err, err


def test_every_object_and_pod_carries_the_project_labels() -> None:
    pods = [d["spec"]["template"] for d in of_kind(*WORKLOADS)]
    pods += [json.loads(t.read_text())["job_configuration"]["job_manifest"]["spec"]["template"] for t in TEMPLATES]
    for meta in [d["metadata"] for _, d in DOCS] + [p["metadata"] for p in pods]:
        labels = meta.get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "elastic-llmops", meta
        assert labels.get("app.kubernetes.io/name"), meta


def test_every_service_and_network_policy_selects_a_workload_and_its_named_ports() -> None:
    pods = [d["spec"]["template"] for d in of_kind(*WORKLOADS)]

    def selected(selector: dict[str, str]) -> list[dict[str, Any]]:
        return [p for p in pods if selector.items() <= p["metadata"]["labels"].items()]

    for svc in of_kind("Service"):
        (pod,) = selected(svc["spec"]["selector"])
        ports = {p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, (svc["metadata"]["name"], port)
    for policy in of_kind("NetworkPolicy"):
        (pod,) = selected(policy["spec"]["podSelector"]["matchLabels"])
        exposed = {p["containerPort"] for c in pod["spec"]["containers"] for p in c["ports"]}
        assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} == exposed
    for workload in of_kind(*WORKLOADS):
        assert workload["spec"]["selector"]["matchLabels"].items() <= \
            workload["spec"]["template"]["metadata"]["labels"].items()


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    specs = [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in of_kind(*WORKLOADS)]
    return specs + [(t.name, rendered_job(json.loads(t.read_text()))["spec"]["template"]["spec"]) for t in TEMPLATES]


def test_every_configmap_secret_and_service_account_reference_resolves() -> None:
    configmaps = {d["metadata"]["name"]: set(d["data"]) for d in of_kind("ConfigMap")}
    accounts = {d["metadata"]["name"] for d in of_kind("ServiceAccount")}
    claims = {d["metadata"]["name"] for d in of_kind("PersistentVolumeClaim")}
    used: set[str] = set()

    def check(kind: str, name: str, keys: set[str], where: str) -> None:
        known = configmaps if kind == "ConfigMap" else USER_SECRETS
        assert name in known, f"{where}: {kind} {name!r} is neither in the manifests nor a documented user Secret"
        assert keys <= known[name], f"{where}: {kind} {name!r} has no key(s) {keys - known[name]}"
        used.add(name)

    for where, spec in _pod_specs():
        assert spec.get("serviceAccountName", "default") in accounts | {"default"}, where
        for v in spec.get("volumes", []):
            if "configMap" in v:
                check("ConfigMap", v["configMap"]["name"], {i["key"] for i in v["configMap"].get("items", [])}, where)
            if "secret" in v:
                check("Secret", v["secret"]["secretName"], {i["key"] for i in v["secret"].get("items", [])}, where)
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims, where
        for c in spec["containers"]:
            for e in c.get("env", []):
                for kind, ref in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    if ref in e.get("valueFrom", {}):
                        check(kind, e["valueFrom"][ref]["name"], {e["valueFrom"][ref]["key"]}, where)
            for source in c.get("envFrom", []):
                if "secretRef" in source:
                    check("Secret", source["secretRef"]["name"], set(), where)
                if "configMapRef" in source:
                    check("ConfigMap", source["configMapRef"]["name"], set(), where)
    assert set(USER_SECRETS) <= used, f"documented but unused: {set(USER_SECRETS) - used}"
    for binding in of_kind("RoleBinding"):
        assert {s["name"] for s in binding["subjects"]} <= accounts
        assert binding["roleRef"]["name"] in {r["metadata"]["name"] for r in of_kind("Role")}


def test_the_readme_says_how_to_create_each_user_secret() -> None:
    readme = (K8S / "README.md").read_text()
    for name, keys in USER_SECRETS.items():
        assert f"kubectl create secret generic {name}" in readme, name
        assert all(f"--from-literal={k}=" in readme for k in keys), (name, keys)
    assert "kubectl apply -k infra/k8s" in readme


@pytest.mark.parametrize("workload", [d["metadata"]["name"] for d in of_kind(*WORKLOADS)])
def test_every_container_has_limits_probes_and_runs_unprivileged(workload: str) -> None:
    (doc,) = [d for d in of_kind(*WORKLOADS) if d["metadata"]["name"] == workload]
    spec = doc["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    for c in spec["containers"]:
        assert all({"cpu", "memory"} <= set(c["resources"][k]) for k in ("limits", "requests")), c["name"]
        assert "readinessProbe" in c and "livenessProbe" in c, c["name"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]


def _config(configmap: str, key: str) -> str:
    return str(named("ConfigMap", configmap)["data"][key])


def _service_targets() -> set[str]:
    return {f"{s['metadata']['name']}:{p['port']}" for s in of_kind("Service") for p in s["spec"]["ports"]}


def test_prometheus_scrapes_services_that_exist_and_alerts_to_alertmanager(tmp_path: Path) -> None:
    conf = yaml.safe_load(_config("prometheus-config", "prometheus.yml"))
    (am,) = conf["alerting"]["alertmanagers"]
    assert am["static_configs"][0]["targets"] == ["alertmanager:9093"]
    static = {t for job in conf["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]}
    assert static - {"localhost:9090"} <= _service_targets()
    mounts = container("prometheus")["volumeMounts"]
    (rules_dir,) = [m["mountPath"] for m in mounts if m["name"] == "rules"]
    assert conf["rule_files"] == [f"{rules_dir}/*.yml"]
    (nodes,) = [j for j in conf["scrape_configs"] if j["job_name"] == "nodes"]  # the rules count up{job="nodes"}
    (sd,) = nodes["kubernetes_sd_configs"]
    assert sd["role"] == "pod" and sd["selectors"] == [{"role": "pod", "label": "app.kubernetes.io/component=llm-node"}]
    serving = rendered_job(json.loads((K8S / "work-pools" / "gpu-serving.json").read_text()))["spec"]["template"]
    assert serving["metadata"]["labels"]["app.kubernetes.io/component"] == "llm-node"
    (keep_port,) = [r["regex"] for r in nodes["relabel_configs"]
                    if r["source_labels"] == ["__meta_kubernetes_pod_container_port_name"]]
    assert keep_port in {p["name"] for p in serving["spec"]["containers"][0]["ports"]}
    # promtool: the Debian build lacks Kubernetes service discovery, so that one block is swapped for a static
    # target (its fields are asserted above); the rule files are checked as they are mounted.
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: install the Debian package prometheus (`make install`)"
    (tmp_path / "rules").mkdir()
    for name, text in named("ConfigMap", "prometheus-rules")["data"].items():
        (tmp_path / "rules" / name).write_text(text)
    nodes.pop("kubernetes_sd_configs")
    nodes["static_configs"] = [{"targets": ["node:23333"]}]
    conf["rule_files"] = [str(tmp_path / "rules" / "*.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(conf))
    r = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 rule files found" in r.stdout


def test_the_rules_configmap_is_the_render_of_the_stack_config() -> None:
    assert (K8S / "prometheus-rules.yaml").read_text() == render(load_stack_config()), \
        "stale: python -m infra.k8s.render_rules > infra/k8s/prometheus-rules.yaml"


def test_alertmanager_sends_to_the_receiver_with_the_mounted_token(tmp_path: Path) -> None:
    text = _config("alertmanager-config", "alertmanager.yml")
    conf = yaml.safe_load(text)
    assert conf["route"]["group_wait"] == "1s"
    (hook,) = conf["receivers"][0]["webhook_configs"]
    assert hook["url"] == "http://llmops-receiver:8080/alertmanager"
    assert "llmops-receiver:8080" in _service_targets()
    token = Path(hook["http_config"]["authorization"]["credentials_file"])
    mounts = {m["name"]: m["mountPath"] for m in container("alertmanager")["volumeMounts"]}
    volumes = {v["name"]: v for v in named("Deployment", "alertmanager")["spec"]["template"]["spec"]["volumes"]}
    assert str(token.parent) == mounts["receiver-token"]
    assert volumes["receiver-token"]["secret"]["items"] == [{"key": token.name, "path": token.name}]
    amtool = shutil.which("amtool")
    assert amtool, "amtool missing: install the Debian package prometheus-alertmanager (`make install`)"
    (tmp_path / "alertmanager.yml").write_text(text)
    r = subprocess.run([amtool, "check-config", str(tmp_path / "alertmanager.yml")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_haproxy_has_the_runtime_api_and_a_backend_per_pool(tmp_path: Path) -> None:
    cfg = _config("haproxy-config", "haproxy.cfg")
    assert "stats socket ipv4@0.0.0.0:9999 level admin" in cfg
    assert "http-request use-service prometheus-exporter if { path /metrics }" in cfg
    pools = {p.model: p.backend for p in load_stack_config().pools()}
    mapped = dict(line.split() for line in _config("haproxy-config", "models.map").splitlines())
    assert mapped == pools
    for backend in pools.values():
        block = re.split(rf"^backend {backend}$", cfg, flags=re.M)[1].split("\n\n")[0]
        assert "balance leastconn" in block and "option httpchk GET /health" in block
        assert re.search(r"server-template node 1-\d+ \S+ check .*disabled", block), backend
    haproxy = shutil.which("haproxy")
    assert haproxy, "haproxy missing: install the Debian package haproxy (`make install`)"
    (tmp_path / "models.map").write_text(_config("haproxy-config", "models.map"))
    (tmp_path / "haproxy.cfg").write_text(cfg.replace("/usr/local/etc/haproxy/", f"{tmp_path}/"))
    r = subprocess.run([haproxy, "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_prefect_and_mlflow_use_the_databases_postgres_creates() -> None:
    init = _config("postgres-init", "10-databases.sh")
    assert "for db in prefect mlflow" in init
    prefect = env_of(container("prefect-server"))
    assert prefect["PREFECT_API_DATABASE_CONNECTION_URL"] == \
        "postgresql+asyncpg://$(PG_USER):$(PG_PASSWORD)@postgres:5432/prefect"
    assert prefect["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    mlflow = container("mlflow")
    assert env_of(mlflow)["MLFLOW_BACKEND_STORE_URI"] == "postgresql://$(PG_USER):$(PG_PASSWORD)@postgres:5432/mlflow"
    # $(VAR) is expanded only from variables defined earlier in the list
    for c in (container("prefect-server"), mlflow):
        names = [e["name"] for e in c["env"]]
        assert names.index("PG_USER") < names.index("PG_PASSWORD") < min(
            i for i, e in enumerate(c["env"]) if "$(PG_PASSWORD)" in e.get("value", ""))


def test_mlflow_matches_the_client_version_and_answers_its_service_name() -> None:
    c = container("mlflow")
    pinned = re.search(r"^mlflow==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    assert pinned and c["image"] == f"ghcr.io/mlflow/mlflow:v{pinned[1]}-full"
    args = c["command"]
    assert args[:2] == ["mlflow", "server"] and args[args.index("--workers") + 1] == "2"
    assert args[args.index("--artifacts-destination") + 1] == "s3://mlflow/artifacts"
    allowed = args[args.index("--allowed-hosts") + 1].split(",")
    for host in ("mlflow:5000", "mlflow.llmops.svc:5000", "mlflow.llmops.svc.cluster.local:5000"):
        # MLflow's Host check: fnmatch for patterns with '*', equality otherwise
        assert any(fnmatch.fnmatch(host, a) if "*" in a else host == a for a in allowed), host


def test_the_worker_polls_the_kubernetes_pool_with_the_rights_its_jobs_need() -> None:
    c = container("prefect-worker")
    assert c["args"][:7] == ["prefect", "worker", "start", "--pool", "k8s-gpu", "--type", "kubernetes"]
    env = env_of(c)
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api" and "prefect-server:4200" in _service_targets()
    assert env["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"] == "llmops"  # the Role is namespaced
    grants = {(g, res): set(rule["verbs"]) for rule in named("Role", "prefect-worker")["rules"]
              for g in rule["apiGroups"] for res in rule["resources"]}
    assert {"create", "watch", "delete"} <= grants[("batch", "jobs")]
    assert {"list", "watch", "delete"} <= grants[("", "pods")]
    assert "get" in grants[("", "pods/log")] and "watch" in grants[("", "events")]
    assert {"list", "watch"} <= {v for rule in named("Role", "prometheus")["rules"] for v in rule["verbs"]}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_work_pool_template_renders_to_a_valid_job(template: Path, version: str) -> None:
    raw = json.loads(template.read_text())
    validate_base_job_template(raw)  # what the Prefect server checks when the pool is created: no undeclared variable
    jsonschema.Draft202012Validator.check_schema(raw["variables"])
    defaults = {k: p["default"] for k, p in raw["variables"]["properties"].items() if "default" in p}
    jsonschema.validate(defaults, raw["variables"])
    job = rendered_job(raw)
    pod = job["spec"]["template"]["spec"]
    # Prefect's worker (prefect-kubernetes) insists on these two in the pod spec, where Kubernetes has no such
    # fields: the API server drops them with a warning. Strict validation runs without them.
    assert (pod.pop("parallelism"), pod.pop("completions"), pod["restartPolicy"]) == (1, 1, "Never")
    assert pod["containers"][0]["name"] == "prefect-job"
    assert (err := schema_error(job, version)) is None, f"{template.name}: {err}"
    (c,) = pod["containers"]
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1 and {"cpu", "memory"} <= set(c["resources"]["limits"])
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu" and pod["securityContext"]["runAsNonRoot"] is True
    assert c["args"] == ["prefect", "flow-run", "execute"]
