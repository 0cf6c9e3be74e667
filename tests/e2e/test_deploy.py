"""deploy/ is checked offline, with the tools a user has: lint, schemas, render, compile.

- the Dockerfile passes hadolint; the compose file passes the Compose Specification schema
  (shipped inside check-jsonschema); their policies compile;
- every Kubernetes overlay renders with kustomize (the kubectl wheel's) and every rendered
  object validates strictly (unknown fields fail) against two Kubernetes versions, the
  ServiceMonitor against the vendored subset of its CRD schema;
- the rendered objects keep the promises docs/deploy.md makes (drain fits in the grace
  period, probes on the admin port, admin port private, non-root, read-only root, spread);
- the image builds where a container engine exists (skipped, saying so, where none does).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from gateway.app import compile_text
from gateway.policy.units import parse_duration

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
KUBE = ROOT / "deploy" / "kubernetes"
OVERLAYS = ["single-region", "multi-region/us-east", "multi-region/eu-west"]
# The oldest Kubernetes still commonly run and a current one; both must accept every object.
KUBERNETES_VERSIONS = ["1.29.0", "1.35.0"]
SERVICEMONITOR_SCHEMA = KUBE / "schemas" / "servicemonitor-monitoring.coreos.com-v1.json"
PROMETHEUSRULE_SCHEMA = KUBE / "schemas" / "prometheusrule-monitoring.coreos.com-v1.json"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def tool(name: str) -> str:
    """A tool from this virtualenv (the test extra installs them), else from PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        message = f"{name} is not installed (pip install -e '.[test]')"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)


# --- container ---------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    hadolint = tool("hadolint")
    r = run(hadolint, "--failure-threshold", "info", str(DOCKER / "Dockerfile"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_does_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD tailguard run\n")
    r = run(tool("hadolint"), str(bad))
    assert r.returncode != 0
    assert "DL3007" in r.stdout  # latest tag


def test_final_image_runs_tailguard_as_pid1_unprivileged() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    stages = text.split("\nFROM ")
    assert len(stages) == 3, "a build stage and a final stage"
    final = stages[-1]
    assert final.startswith("${PYTHON_IMAGE}") and "slim" in text.split("PYTHON_IMAGE=")[1]
    assert "USER 10001:10001" in final
    assert 'ENTRYPOINT ["tailguard", "run"]' in final  # exec form: PID 1 gets the signals
    assert "HEALTHCHECK" in final and "/healthz" in final
    # nothing that builds software is installed in the final stage
    assert "apt-get" not in final and "pip install" not in final
    assert "TAILGUARD_WORKERS" in final


def test_dockerignore_lets_in_what_the_image_copies() -> None:
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = []
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            copied += line.split()[1:-1]
    assert copied and set(copied) <= allowed, (copied, allowed)
    for path in copied:
        assert (ROOT / path).exists(), path


def test_workers_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.cli import build_parser

    monkeypatch.setenv("TAILGUARD_WORKERS", "3")
    assert build_parser().parse_args(["run", "-p", "x"]).workers == 3
    assert build_parser().parse_args(["run", "-p", "x", "--workers", "2"]).workers == 2
    # a worker inherits that environment; it must serve, not supervise workers of its own
    monkeypatch.setenv("TAILGUARD_WORKER", "0")
    assert build_parser().parse_args(["run", "-p", "x"]).workers == 1


def image_contract() -> tuple[list[str], list[str], dict[str, str]]:
    """ENTRYPOINT, CMD and ENV of the final stage, as the container runtime would read them."""
    final = (DOCKER / "Dockerfile").read_text().split("\nFROM ")[-1]
    joined = final.replace("\\\n", " ")
    entry = json.loads(joined.split("\nENTRYPOINT ", 1)[1].splitlines()[0])
    cmd = json.loads(joined.split("\nCMD ", 1)[1].splitlines()[0])
    env_line = joined.split("\nENV ", 1)[1].splitlines()[0]
    env = dict(item.split("=", 1) for item in env_line.split())
    health = joined.split("\nHEALTHCHECK ", 1)[1].splitlines()[0]
    env["_HEALTHCHECK"] = health.split(" CMD ", 1)[1]
    return entry, cmd, env


def test_the_image_command_serves_reloads_on_hup_and_drains_on_term(tmp_path: Path) -> None:
    """What the container runs, run here: entrypoint + default command + environment."""
    from tests.redis_server import free_port

    entry, cmd, env = image_contract()
    assert entry == ["tailguard", "run"]
    port, admin = free_port(), free_port()
    policy = tmp_path / "policy.yaml"
    policy.write_text((ROOT / "policies" / "minimal.yaml").read_text())
    args = [
        a.replace("/etc/tailguard/policy.yaml", str(policy))
        .replace("0.0.0.0:8080", f"127.0.0.1:{port}")
        .replace("0.0.0.0:9090", f"127.0.0.1:{admin}")
        for a in cmd
    ]
    health_url = env["TAILGUARD_HEALTH_URL"].replace(":9090", f":{admin}")
    environ = {**os.environ, "TAILGUARD_WORKERS": "2", "TAILGUARD_HEALTH_URL": health_url}
    tailguard = str(Path(sys.executable).parent / "tailguard")
    proc = subprocess.Popen([tailguard, *entry[1:], *args], env=environ, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        health = json.loads(env["_HEALTHCHECK"])
        assert health[0] == "python"
        probe = [sys.executable, *health[1:]]
        deadline = time.monotonic() + 60
        while subprocess.run(probe, env=environ, capture_output=True).returncode != 0:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "HEALTHCHECK never passed"
            time.sleep(0.2)
        # /healthz answers while the supervisor runs; /readyz once every worker serves (and
        # has its signal handlers: a SIGHUP before that would end a worker)
        while not ready(admin):
            assert time.monotonic() < deadline, "the workers never became ready"
            time.sleep(0.2)
        reloads = applied_reloads(admin)
        proc.send_signal(signal.SIGHUP)  # reload: the supervisor passes it to both workers
        deadline = time.monotonic() + 20
        while applied_reloads(admin) < reloads + 2:
            assert time.monotonic() < deadline, "SIGHUP did not reload every worker"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.terminate()  # the supervisor stops its workers; SIGKILL would orphan them
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        # exactly one supervisor and two workers ran: nothing is left of them
        leftover = run("pgrep", "-f", str(policy)).stdout.split()
        assert leftover == [], leftover


def ready(admin_port: int) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=5) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def applied_reloads(admin_port: int) -> float:
    """Policy reloads applied, summed over the workers of the merged /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "tailguard_policy_reloads_total"
        and sample.labels.get("result") == "applied"
    )


def test_compose_file_follows_the_compose_specification(tmp_path: Path) -> None:
    check = tool("check-jsonschema")
    compose = DOCKER / "compose.yaml"
    r = run(check, "--builtin-schema", "vendor.compose-spec", str(compose))
    assert r.returncode == 0, r.stdout + r.stderr
    # the schema is strict: a misspelt service key fails
    bad = tmp_path / "compose.yaml"
    bad.write_text(
        compose.read_text().replace('    ports: ["127.0.0.1:8081', '    portz: ["127.0.0.1:8081')
    )
    r = run(check, "--builtin-schema", "vendor.compose-spec", str(bad))
    assert r.returncode != 0


def test_compose_stack_is_complete_and_its_policy_compiles() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    gateways = [s for s in services if s.startswith("gateway-")]
    assert len(gateways) == 2
    regions = {services[g]["environment"]["TAILGUARD_REGION"] for g in gateways}
    assert regions == {"us-east", "eu-west"}
    sims = {s: " ".join(services[s]["command"]) for s in services if s.startswith("sim-")}
    assert {c.split("--region ")[1].split()[0] for c in sims.values()} == {"us-east", "eu-west"}
    assert {"redis", "prometheus"} <= set(services)
    policy = (DOCKER / "policy.yaml").read_text()
    snapshot = compile_text(policy, "deploy/docker/policy.yaml")
    assert snapshot.settings.state.url == "redis://redis:6379/0"
    prom = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(targets) == [f"{g}:9090" for g in sorted(gateways)]
    # the drain fits in the stop grace period
    grace = parse_duration(services["gateway-1"]["stop_grace_period"])
    assert grace > snapshot.settings.drain_timeout


def container_engine() -> str | None:
    for name in ("docker", "podman", "buildah"):
        path = shutil.which(name)
        if path is None:
            continue
        probe = [path, "info"] if name != "buildah" else [path, "version"]
        if subprocess.run(probe, capture_output=True, timeout=30).returncode == 0:
            return path
    return None


@pytest.mark.slow
def test_image_builds_and_runs() -> None:
    engine = container_engine()
    if engine is None:
        pytest.skip(
            "NO CONTAINER ENGINE: docker/podman/buildah missing or not working here, so the "
            "image was not built (the Dockerfile is linted by hadolint above)"
        )
    tag = "tailguard:test"
    build = [engine, "build", "-f", str(DOCKER / "Dockerfile"), "-t", tag, str(ROOT)]
    if engine.endswith("buildah"):
        build = [engine, "bud", *build[2:]]
    r = subprocess.run(build, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    if engine.endswith("buildah"):
        return
    r = subprocess.run(
        [engine, "run", "--rm", "--read-only", "--entrypoint", "tailguard", tag, "version"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0 and r.stdout.startswith("tailguard "), r.stdout + r.stderr


# --- Kubernetes --------------------------------------------------------------------------------


def render(overlay: str) -> list[dict[str, Any]]:
    r = run(tool("kubectl"), "kustomize", str(KUBE / "overlays" / overlay))
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, (kind, name, [o["metadata"]["name"] for o in found])
    return found[0]


def validate(obj: dict[str, Any], version: str) -> None:
    if obj["apiVersion"] == "monitoring.coreos.com/v1" and obj["kind"] == "ServiceMonitor":
        jsonschema.validate(obj, json.loads(SERVICEMONITOR_SCHEMA.read_text()))
        return
    if obj["apiVersion"] == "monitoring.coreos.com/v1" and obj["kind"] == "PrometheusRule":
        jsonschema.validate(obj, json.loads(PROMETHEUSRULE_SCHEMA.read_text()))
        return
    kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates_strictly(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, version: str
) -> None:
    objects = rendered[overlay]
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted([
        "Namespace", "ConfigMap", "Secret", "Service", "Service", "Deployment",
        "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy", "ServiceMonitor",
        "PrometheusRule",
    ])  # fmt: skip
    for obj in objects:
        validate(obj, version)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_strict_validation_rejects_an_unknown_field(
    rendered: dict[str, list[dict[str, Any]]], version: str
) -> None:
    deployment = json.loads(json.dumps(one(rendered["single-region"], "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment, version)
    monitor = json.loads(json.dumps(one(rendered["single-region"], "ServiceMonitor")))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor, version)
    rule = json.loads(json.dumps(one(rendered["single-region"], "PrometheusRule")))
    rule["spec"]["groups"][0]["rules"][0]["recrod"] = rule["spec"]["groups"][0]["rules"][0][
        "record"
    ]
    with pytest.raises(jsonschema.ValidationError):
        validate(rule, version)


def generated_rule(objects: list[dict[str, Any]], tmp_path: Path) -> dict[str, Any]:
    """`tailguard rules --format kubernetes` on the ConfigMap's policy, as a user runs it."""
    from gateway.cli import main

    policy = one(objects, "ConfigMap", "tailguard-policy")["data"]["policy.yaml"]
    keys = one(objects, "Secret", "tailguard-secrets")["stringData"]["keys.yaml"]
    (tmp_path / "keys.yaml").write_text(keys)
    source = tmp_path / "rules-policy.yaml"
    source.write_text(
        policy.replace("/etc/tailguard/secrets/keys.yaml", str(tmp_path / "keys.yaml"))
    )
    out = tmp_path / "rule.yaml"
    assert main(["rules", str(source), "--format", "kubernetes", "--out", str(out)]) == 0
    generated: dict[str, Any] = yaml.safe_load(out.read_text())
    return generated


def policy_of(objects: list[dict[str, Any]], tmp_path: Path) -> Any:
    """The ConfigMap's policy compiled, with the Secret's keys file where the pod mounts it."""
    policy = one(objects, "ConfigMap", "tailguard-policy")["data"]["policy.yaml"]
    keys = one(objects, "Secret", "tailguard-secrets")["stringData"]["keys.yaml"]
    (tmp_path / "keys.yaml").write_text(keys)
    mounted = "/etc/tailguard/secrets/keys.yaml"
    assert mounted in policy
    return compile_text(policy.replace(mounted, str(tmp_path / "keys.yaml")), "policy.yaml")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_deployment_keeps_its_promises(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, tmp_path: Path
) -> None:
    objects = rendered[overlay]
    snapshot = policy_of(objects, tmp_path)
    settings = snapshot.settings
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (gateway,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert ports == {"http": settings.listen[1], "admin": settings.admin_listen[1]}
    assert settings.listen[0] == settings.admin_listen[0] == "0.0.0.0"
    # probes on the admin port
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    # the drain fits: preStop sleep + drain_timeout < terminationGracePeriodSeconds
    pre_stop = float(gateway["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pre_stop + settings.drain_timeout < pod["terminationGracePeriodSeconds"]
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0
    # unprivileged, read-only root, requests and a memory limit
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = gateway["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(gateway["resources"]["requests"])
    assert "memory" in gateway["resources"]["limits"]
    # the policy is a mounted directory (a subPath mount would never see an update)
    mount = next(m for m in gateway["volumeMounts"] if m["name"] == "policy")
    assert "subPath" not in mount
    assert gateway["args"][:2] == ["--policy", f"{mount['mountPath']}/policy.yaml"]
    env = {e["name"]: e for e in gateway["env"]}
    assert env["TAILGUARD_REGION"]["value"] == (
        "us-east" if overlay == "single-region" else overlay.split("/")[1]
    )
    assert env["TAILGUARD_WORKERS"]["value"] == "1"
    # spread over nodes; over zones, hard, when several regions are in play
    spread = {c["topologyKey"]: c["whenUnsatisfiable"] for c in pod["topologySpreadConstraints"]}
    assert "kubernetes.io/hostname" in spread
    if overlay.startswith("multi-region"):
        assert spread["topology.kubernetes.io/zone"] == "DoNotSchedule"
        regions = {s.spec.region for b in snapshot.backends.values() for s in b.states}
        assert {"us-east", "eu-west"} <= regions
        assert snapshot.settings.state.url.startswith("redis+sentinel://")
    # everything selects the gateway's pods and nothing else
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("PodDisruptionBudget",):
        assert one(objects, kind)["spec"]["selector"]["matchLabels"].items() <= labels.items()
    netpol = one(objects, "NetworkPolicy")
    assert netpol["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert netpol["spec"]["podSelector"]["matchLabels"]
    # the admin port: not in the clients' Service, and only the monitoring namespace may reach it
    service = one(objects, "Service", "tailguard")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    for rule in netpol["spec"]["ingress"]:
        if any(p["port"] == "admin" for p in rule["ports"]):
            assert rule["from"] and all("namespaceSelector" in f for f in rule["from"])
        else:
            assert [p["port"] for p in rule["ports"]] == ["http"]
    monitor = one(objects, "ServiceMonitor")
    admin_service = one(objects, "Service", "tailguard-admin")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items()
        <= admin_service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == "admin"
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 3
    # the PrometheusRule is what `tailguard rules` writes for the policy the ConfigMap holds
    rule = one(objects, "PrometheusRule")
    assert rule["spec"] == generated_rule(objects, tmp_path)["spec"]
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert alerts and all(a["annotations"]["runbook_url"] for a in alerts)
