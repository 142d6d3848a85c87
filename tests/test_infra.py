"""Static checks of infra/: every manifest parses, the cluster conventions hold, nothing is exposed
publicly and no secret is committed. Fast, offline: no Docker, Kubernetes or cloud access."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
COMPOSE = INFRA / "mlflow" / "docker-compose.yml"
ENV_EXAMPLE = INFRA / "mlflow" / ".env.example"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
LAUNCHER_YAMLS = [INFRA / "ray" / "aws-gpu.yaml", INFRA / "ray" / "gcp-gpu.yaml"]
SHARED = "/mnt/cluster_storage"
LOCAL_ONLY = "127.0.0.1"


def _is_local_secret_file(path: Path) -> bool:
    """Files infra/.gitignore keeps out of git (a developer's filled-in .env), not scanned."""
    return path.name == ".env" or (path.name.startswith(".env.") and path.name != ".env.example")


def _infra_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.is_file() and not _is_local_secret_file(p))


def _yaml_files() -> list[Path]:
    return [p for p in _infra_files() if p.suffix in {".yaml", ".yml"}]


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _k8s_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in sorted(K8S.glob("*.yaml")) for d in _docs(p)]


def _one(kind: str) -> dict[str, Any]:
    found = [d for _, d in _k8s_objects() if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} under infra/k8s, found {len(found)}"
    return found[0]


def _ray_cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    return [("RayCluster", _one("RayCluster")["spec"]), ("RayJob", _one("RayJob")["spec"]["rayClusterSpec"])]


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _containers(pod_template: dict[str, Any]) -> list[dict[str, Any]]:
    return pod_template["spec"]["containers"]


# ----------------------------------------------------------------------------- parsing


def test_infra_layout_exists():
    for rel in [
        "docker/Dockerfile",
        "docker/.dockerignore",
        "docker/Dockerfile.dockerignore",
        "ray/aws-gpu.yaml",
        "ray/gcp-gpu.yaml",
        "k8s/raycluster.yaml",
        "k8s/rayjob.yaml",
        "k8s/pvc.yaml",
        "k8s/kustomization.yaml",
        "mlflow/docker-compose.yml",
        "mlflow/.env.example",
        ".gitignore",
        "README.md",
        "Makefile",
    ]:
        assert (INFRA / rel).is_file(), rel


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_yaml_parses(path: Path):
    docs = _docs(path)
    assert docs, f"{path} has no YAML document"
    assert all(isinstance(d, dict) for d in docs)


def test_k8s_manifests_have_api_version_and_kind():
    objects = _k8s_objects()
    assert objects
    for path, doc in objects:
        assert doc.get("apiVersion") and doc.get("kind"), f"{path.name}: missing apiVersion/kind"
    kinds = {d["kind"]: d["apiVersion"] for _, d in objects}
    assert kinds["RayCluster"] == "ray.io/v1" and kinds["RayJob"] == "ray.io/v1"
    assert kinds["PersistentVolumeClaim"] == "v1"


def test_kustomization_lists_existing_files():
    kust = _docs(K8S / "kustomization.yaml")[0]
    for res in kust["resources"]:
        assert (K8S / res).is_file(), res
    # the RayJob brings its own cluster; applying it with the RayCluster would start two
    assert "rayjob.yaml" not in kust["resources"]
    assert {"pvc.yaml", "raycluster.yaml"} <= set(kust["resources"])


# ----------------------------------------------------------------------------- Kubernetes


def test_rayjob_runs_cktf_tune():
    spec = _one("RayJob")["spec"]
    entrypoint = spec["entrypoint"].strip()
    assert re.match(r"^cktf tune \S+\.ya?ml( --resume)?$", entrypoint), entrypoint
    study = entrypoint.split()[2]
    assert (ROOT / study).is_file(), f"the RayJob runs {study}, which is not in the repository (nor the image)"
    # KubeRay pastes the entrypoint into the submitter's shell command: no operators
    assert not re.search(r"&&|;|\|", entrypoint)
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert isinstance(spec["activeDeadlineSeconds"], int) and spec["activeDeadlineSeconds"] > 0


def test_rayjob_runtime_env():
    job = _one("RayJob")
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    env_vars = env["env_vars"]
    ns = job["metadata"]["namespace"]
    assert env_vars["MLFLOW_TRACKING_URI"] == f"http://mlflow.{ns}.svc.cluster.local:5000"
    assert env_vars["CKTF_DATA_ROOT"] == f"{SHARED}/data"
    assert env_vars["CKTF_WORKDIR"].startswith(SHARED) and env_vars["CKTF_STORAGE"].startswith(SHARED)
    assert env["working_dir"] == "/home/ray/cktf", "the study paths resolve in the image's copy of the repo"
    assert _docs(K8S / "kustomization.yaml")[0]["namespace"] == ns


@pytest.mark.parametrize("which", ["RayCluster", "RayJob"])
def test_ray_cluster_spec(which: str):
    spec = dict(_ray_cluster_specs())[which]
    assert spec["rayVersion"] == "2.60.0"
    auth = spec["authOptions"]
    assert auth["mode"] == "token"
    assert set(auth) <= {"mode", "secretName"}, "the token itself must live in a Secret"
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert not head.get("enableIngress", False)
    workers = spec["workerGroupSpecs"]
    assert workers
    pvc = _one("PersistentVolumeClaim")["metadata"]["name"]
    for group in [head, *workers]:
        pod = group["template"]["spec"]
        volumes = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in volumes}
        mounts = {m["name"]: m["mountPath"] for c in _containers(group["template"]) for m in c.get("volumeMounts", [])}
        assert any(claims.get(name) == pvc and path == SHARED for name, path in mounts.items())
        assert pod.get("securityContext", {}).get("fsGroup") == 100
    for group in workers:
        assert group["minReplicas"] <= group["maxReplicas"] and group["maxReplicas"] > 0
        pod = group["template"]["spec"]
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        for c in _containers(group["template"]):
            assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1


def test_ray_clusters_use_one_image():
    images = {
        c["image"]
        for _, spec in _ray_cluster_specs()
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for c in _containers(group["template"])
    }
    assert len(images) == 1, images
    assert "ray-ml" not in images.pop()


def test_nothing_exposed_outside_the_cluster():
    for path, doc in _k8s_objects():
        assert doc["kind"] not in {"Ingress", "Gateway", "HTTPRoute"}, path.name
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", path.name
    assert _one("PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]


def test_k8s_mlflow_allows_its_service_host():
    deploy = _one("Deployment")
    (container,) = _containers(deploy["spec"]["template"])
    args = container["args"]
    hosts = next(a.split("=", 1)[1] for a in args if a.startswith("--allowed-hosts="))
    uri = yaml.safe_load(_one("RayJob")["spec"]["runtimeEnvYAML"])["env_vars"]["MLFLOW_TRACKING_URI"]
    assert uri.removeprefix("http://") in hosts.split(",")
    assert "*" not in hosts.split(",")
    assert "--serve-artifacts" in args
    env = {e["name"]: e for e in container.get("env", [])}
    assert "secretKeyRef" in env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]
    assert _one("Service")["metadata"]["name"] == "mlflow"


# ----------------------------------------------------------------------------- MLflow compose


def test_compose_binds_ports_privately():
    services = _compose()["services"]
    published = 0
    for name, svc in services.items():
        for port in svc.get("ports", []):
            published += 1
            if isinstance(port, dict):
                host = str(port.get("host_ip", ""))
            else:
                # HOST:HOST_PORT:CONTAINER_PORT, where HOST and HOST_PORT may be ${VAR:-default}
                m = re.fullmatch(r"(\$\{[^}]*\}|[^:]+):(\$\{[^}]*\}|[^:]+):(\d+(?:/\w+)?)", str(port))
                assert m, f"{name}: {port!r} does not name a host address"
                host = m.group(1)
            var = re.fullmatch(r"\$\{\w+(?::-([^}]*))?\}", host)
            assert host == LOCAL_ONLY or var, f"{name}: {port!r} binds to {host!r}"
            if var and var.group(1) is not None:
                assert var.group(1) == LOCAL_ONLY, f"{name}: default bind address {var.group(1)!r}"
    assert published >= 1
    assert "ports" not in services["postgres"]


def test_compose_mlflow_server():
    services = _compose()["services"]
    mlflow = services["mlflow"]
    command = mlflow["command"]
    command = command if isinstance(command, list) else command.split()
    joined = " ".join(command)
    assert "--allowed-hosts" in joined
    assert "--serve-artifacts" in command
    assert "--artifacts-destination=s3://mlflow/" in command or "s3://mlflow/" in command
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://${")
    assert "healthcheck" in mlflow
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    init = [s for s in services.values() if "minio/mc" in str(s.get("image", ""))]
    assert len(init) == 1 and "mb" in str(init[0]["command"])
    for name in ("postgres", "minio"):
        assert "healthcheck" in services[name], name


def test_compose_credentials_come_from_env_file():
    services = _compose()["services"]
    for name, svc in services.items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|ACCESS_KEY|_USER$", key):
                assert "${" in str(value), f"{name}.{key} is not read from .env"
    needed = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    defined = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^\w+=", line)}
    assert needed and needed <= defined, needed - defined


def test_env_example_holds_placeholders_only():
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^(\w+)=(.*)$", line)
        if m and re.search(r"PASSWORD|SECRET", m.group(1)):
            assert m.group(2).startswith("change-me"), line


def test_env_files_are_git_ignored():
    patterns = (INFRA / ".gitignore").read_text().splitlines()
    assert ".env" in patterns and "!.env.example" in patterns
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    check = ["git", "-C", str(ROOT), "check-ignore", "-q"]
    assert subprocess.run([*check, "infra/mlflow/.env"]).returncode == 0
    assert subprocess.run([*check, "infra/mlflow/.env.example"]).returncode == 1


# ----------------------------------------------------------------------------- secrets

SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key block": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GCP service-account key": re.compile(r'"private_key"\s*:'),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[abpr]-[A-Za-z0-9-]{10,}"),
}
# KEY = value / KEY: value with a secret-like key name and a literal value
ASSIGNMENT = re.compile(
    r"(?i)\b([\w.-]*(?:password|passwd|secret_key|secret_access_key|api_key|auth_token|access_token))"
    r"\b[\"']?\s*[:=]\s*[\"']?([^\s\"',}]*)"
)
# scheme://user:password@host with a literal password
URI_CREDENTIALS = re.compile(r"://[^/\s:@]+:([^@\s/]+)@")


def _literal(value: str) -> bool:
    """A value that is not a reference (${VAR}, $VAR, $(cmd), {{ template }}, <placeholder>, a file path)."""
    return bool(value) and not value.startswith(("$", "{{", "<", "~/", "/", "./"))


@pytest.mark.parametrize("path", _infra_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_no_secrets_committed(path: Path):
    text = path.read_text(errors="replace")
    for what, pattern in SECRET_PATTERNS.items():
        assert not pattern.search(text), f"{path}: looks like a {what}"
    for lineno, line in enumerate(text.splitlines(), 1):
        for key, value in ASSIGNMENT.findall(line):
            if not _literal(value) or key.lower().endswith(("secretname", "secret_name")):
                continue
            placeholder = path == ENV_EXAMPLE and value.startswith("change-me")
            assert placeholder, f"{path}:{lineno}: literal secret assignment {key}={value!r}"
        for password in URI_CREDENTIALS.findall(line):
            assert not _literal(password), f"{path}:{lineno}: credentials in a URI"


def test_secret_scan_catches_examples():
    assert SECRET_PATTERNS["AWS access key id"].search("key AKIA" + "ABCDEFGHIJKLMNOP")
    assert [v for _, v in ASSIGNMENT.findall("POSTGRES_PASSWORD=hunter2")] == ["hunter2"]
    assert [v for _, v in ASSIGNMENT.findall("  password: 'hunter2'")] == ["hunter2"]
    assert not any(_literal(v) for _, v in ASSIGNMENT.findall("POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?x}"))
    assert _literal(URI_CREDENTIALS.findall("postgresql://u:hunter2@db:5432/x")[0])
    assert not _literal(URI_CREDENTIALS.findall("postgresql://${U}:${P}@db:5432/x")[0])


# ----------------------------------------------------------------------------- image


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def test_dockerfile_base_and_user():
    instr = _dockerfile_instructions()
    froms = [arg for op, arg in instr if op == "FROM"]
    assert froms and all(f.startswith("rayproject/ray:") for f in froms), froms
    args = dict(a.split("=", 1) for op, a in instr if op == "ARG" and "=" in a)
    assert re.fullmatch(r"2\.60\.0-py3\d+-cu\d+", args["RAY_TAG"]), "the GPU (-cuXXX) tag of Ray 2.60.0"
    assert [a for op, a in instr if op == "USER"][-1] == "ray", "the image must end as the non-root ray user"
    env = " ".join(a for op, a in instr if op == "ENV")
    for var in ("CKTF_CACHE_DIR", "CKTF_DATA_ROOT", "CKTF_STORAGE", "CKTF_WORKDIR"):
        assert f"{var}={SHARED}" in env, var
    assert not re.search(r"(?i)(password|secret|token|access_key)\w*=", env)
    pip = [a for op, a in instr if op == "RUN" and "pip install" in a]
    assert pip
    for run in pip:  # every install runs under the base image's constraints
        assert run.count("pip install") == run.count("pip install -c "), run


def test_dockerignore_allows_only_what_the_image_copies():
    ignore = INFRA / "docker" / ".dockerignore"
    assert ignore.read_text() == (INFRA / "docker" / "Dockerfile.dockerignore").read_text()
    rules = [ln.strip() for ln in ignore.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert rules[0] == "*", "allow-list: exclude everything first"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    for op, arg in _dockerfile_instructions():
        if op == "COPY":
            sources = [s for s in arg.split() if not s.startswith("--")][:-1]
            for src in sources:
                assert src.rstrip("/") in allowed, f"COPY {src} is not re-included in .dockerignore"


# ----------------------------------------------------------------------------- ray up


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_config(path: Path):
    cfg = _docs(path)[0]
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and head["resources"].get("GPU", 0) == 0
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    assert workers
    for name, node in workers.items():
        assert 0 <= node["min_workers"] <= node["max_workers"], name
        gpu = node["resources"].get("GPU") or re.match(r"(g5|g6|p4d|p5)\.", node["node_config"].get("InstanceType", ""))
        assert gpu, f"{name} has no GPU"
    assert cfg["max_workers"] >= max(n["max_workers"] for n in workers.values())
    image = cfg["docker"]["image"]
    assert image and "ray-ml" not in image
    run_options = " ".join(cfg["docker"]["run_options"])
    assert "RAY_AUTH_MODE=token" in run_options and f"{SHARED}:{SHARED}" in run_options
    assert any("auth_token" in target for target in cfg["file_mounts"])
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "--num-cpus=0" in head_start
    for rule in cfg["provider"].get("security_group", {}).get("IpPermissions", []):
        if any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", [])):
            assert rule["FromPort"] == rule["ToPort"] == 22, "only SSH may be open to the internet"
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert key in cfg, f"{key} missing: Ray's default pip installs would run"


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_config_validates_against_ray_schema(path: Path):
    util = pytest.importorskip("ray.autoscaler._private.util")
    util.validate_config(util.prepare_config(_docs(path)[0]))


# ----------------------------------------------------------------------------- docs and Makefile

# The cktf commands the runbook may use, with the flags each accepts.
CKTF_FLAGS = {
    "tune": {"--resume", "--data-root"},
    "export": {"--out", "--onnx"},
    "report": set(),
    "ui": {"--tracking-uri"},
    "data": {"--root", "--download", "--cache-dir"},
}


def test_runbook_uses_existing_cktf_flags():
    text = "\n".join(p.read_text() for p in [INFRA / "README.md", INFRA / "Makefile", K8S / "rayjob.yaml"])
    calls = re.findall(r"\bcktf ((?:tune|export|report|ui|data)\b[^\n`|;)]*)", text)
    assert calls
    for call in calls:
        sub, *rest = call.split()
        flags = {t.split("=", 1)[0].strip("[]") for t in rest if t.strip("[").startswith("--")}
        assert flags <= CKTF_FLAGS[sub], f"cktf {call}: unknown flags {flags - CKTF_FLAGS[sub]}"


def test_runbook_covers_the_workflow():
    text = (INFRA / "README.md").read_text()
    for needle in [
        "docker build -f infra/docker/Dockerfile",
        "ray up",
        "kubectl apply -k infra/k8s",
        "ray job submit --address http://127.0.0.1:8265 --working-dir . -- cktf tune studies/",
        "ray job logs -f",
        "--resume",
        "cktf export",
        "cktf report",
        "ray down",
        "kubectl delete -k infra/k8s",
        "--allowed-hosts",
        "port-forward",
    ]:
        assert needle in text, needle


def test_makefile_targets():
    targets = set(re.findall(r"^([\w-]+):", (INFRA / "Makefile").read_text(), flags=re.M))
    assert {"image", "push", "up", "submit", "down"} <= targets
