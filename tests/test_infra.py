"""Static checks of infra/: every manifest parses, the cluster conventions hold, nothing is exposed
publicly and no secret is committed. Fast, offline: no Docker, Kubernetes or cloud access."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import stat
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
MLFLOW_DOCKERFILE = INFRA / "mlflow" / "Dockerfile"
MLFLOW_ENTRYPOINT = INFRA / "mlflow" / "entrypoint.sh"
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
        "k8s/networkpolicy.yaml",
        "mlflow/docker-compose.yml",
        "mlflow/Dockerfile",
        "mlflow/entrypoint.sh",
        "mlflow/.dockerignore",
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
    assert kinds["NetworkPolicy"] == "networking.k8s.io/v1"


def test_kustomization_lists_existing_files():
    kust = _docs(K8S / "kustomization.yaml")[0]
    for res in kust["resources"]:
        assert (K8S / res).is_file(), res
    # the RayJob brings its own cluster; applying it with the RayCluster would start two
    assert "rayjob.yaml" not in kust["resources"]
    assert {"pvc.yaml", "raycluster.yaml", "networkpolicy.yaml"} <= set(kust["resources"])


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


# ----------------------------------------------------------------------------- security: Ray pods

RAY_UID, RAY_GID = 1000, 100  # the rayproject image's `ray` user and its group `users`
RAY_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001}
AUTH_PERMISSIONS = {"READ", "NO_PERMISSIONS"}  # never EDIT / MANAGE for users without a grant
RAY_CLIENT_SECRET = "cktf-mlflow-auth"


def _ray_pod_templates() -> list[tuple[str, dict[str, Any]]]:
    """(name, pod template) of the head and every worker group of the RayCluster and the RayJob."""
    out = []
    for which, spec in _ray_cluster_specs():
        out.append((f"{which} head", spec["headGroupSpec"]["template"]))
        out += [(f"{which} worker {g['groupName']}", g["template"]) for g in spec["workerGroupSpecs"]]
    return out


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _secret_ref(entry: dict[str, Any]) -> tuple[str, str]:
    assert "value" not in entry, f"{entry['name']} is a literal, not read from a Secret"
    ref = entry["valueFrom"]["secretKeyRef"]
    assert not ref.get("optional", False), f"{entry['name']}: the Secret must exist"
    return ref["name"], ref["key"]


def _assert_locked_down(where: str, ctx: dict[str, Any] | None) -> None:
    assert ctx, f"{where}: no securityContext"
    assert ctx.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation must be false"
    assert ctx.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities must drop ALL"
    assert not ctx.get("capabilities", {}).get("add"), f"{where}: adds capabilities"
    assert not ctx.get("privileged", False), f"{where}: privileged"
    assert ctx.get("runAsUser", RAY_UID) == RAY_UID and ctx.get("runAsNonRoot", True) is True, where


def test_ray_pods_run_as_non_root():
    templates = _ray_pod_templates()
    assert len(templates) >= 4, "head and worker groups of both the RayCluster and the RayJob"
    for name, template in templates:
        pod = template["spec"].get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, f"{name}: runAsNonRoot"
        assert pod.get("runAsUser") == RAY_UID, f"{name}: runAsUser must be the image's ray user"
        assert pod.get("runAsGroup") == RAY_GID and pod.get("fsGroup") == RAY_GID, f"{name}: gid / fsGroup"
        for c in [*template["spec"].get("initContainers", []), *_containers(template)]:
            _assert_locked_down(f"{name}/{c['name']}", c.get("securityContext"))
        assert not template["spec"].get("hostNetwork") and not template["spec"].get("hostPID"), name


def test_ray_autoscaler_sidecar_is_locked_down():
    for which, spec in _ray_cluster_specs():
        if spec.get("enableInTreeAutoscaling"):
            _assert_locked_down(f"{which} autoscaler", spec.get("autoscalerOptions", {}).get("securityContext"))


def test_ray_pod_user_matches_the_image_and_the_vm_mounts():
    # the image ends as `ray`; the VM clusters hand the shared mount to the same uid:gid
    assert [a for op, a in _dockerfile_instructions() if op == "USER"][-1] == "ray"
    for path in LAUNCHER_YAMLS:
        init = " ".join(_docs(path)[0]["initialization_commands"])
        assert f"chown {RAY_UID}:{RAY_GID} {SHARED}" in init, path.name


def test_ray_pods_keep_gpus_volumes_and_env():
    pvc = _one("PersistentVolumeClaim")["metadata"]["name"]
    for name, template in _ray_pod_templates():
        volumes = template["spec"]["volumes"]
        claims = [v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v]
        assert claims == [pvc], name
        for c in _containers(template):
            assert any(m["mountPath"] == SHARED for m in c.get("volumeMounts", [])), name
            if "worker" in name:
                assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1, name
    head_env = _env(_containers(_one("RayCluster")["spec"]["headGroupSpec"]["template"])[0])
    for var in ("MLFLOW_TRACKING_URI", "CKTF_DATA_ROOT", "CKTF_STORAGE", "CKTF_WORKDIR"):
        assert head_env[var]["value"], var


# ----------------------------------------------------------------------------- security: MLflow auth


def _has_basic_auth(args: list[str]) -> bool:
    pairs = zip(args, args[1:])
    return "--app-name=basic-auth" in args or ("--app-name", "basic-auth") in pairs


def _default(value: str) -> str:
    """A compose value with its ${VAR:-default} references replaced by the defaults."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def _server_and_db(uri: str) -> tuple[str, str]:
    m = re.fullmatch(r"postgresql://[^@]+@([^/]+)/(.+)", _default(uri))
    assert m, uri
    return m.group(1), m.group(2)


def _env_example() -> dict[str, str]:
    lines = ENV_EXAMPLE.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if re.match(r"^\w+=", line))


def test_compose_mlflow_basic_auth():
    services = _compose()["services"]
    mlflow = services["mlflow"]
    command = mlflow["command"]
    assert command[0] == "server" and _has_basic_auth(command)
    # the flags that were there stay
    for flag in ("--host=0.0.0.0", "--serve-artifacts", "--artifacts-destination=s3://mlflow/"):
        assert flag in command, flag
    assert any(a.startswith("--allowed-hosts=") for a in command)
    env = mlflow["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://${")
    # the auth store: a second database on the tracking store's PostgreSQL
    auth_uri = env["MLFLOW_AUTH_DATABASE_URI"]
    assert auth_uri.startswith("postgresql://${")
    server, db = _server_and_db(auth_uri)
    tracking_server, tracking_db = _server_and_db(env["MLFLOW_BACKEND_STORE_URI"])
    assert server == tracking_server == "postgres:5432" and db != tracking_db, (db, tracking_db)
    # credentials from .env (required), the config file on a tmpfs
    for var in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[var] == f"${{{var}:?set {var} in infra/mlflow/.env}}", var
    config_dir = str(Path(env["MLFLOW_AUTH_CONFIG_PATH"]).parent)
    assert config_dir in mlflow["tmpfs"], "basic_auth.ini holds passwords: keep it off the disk"
    assert _default(env["MLFLOW_AUTH_DEFAULT_PERMISSION"]) in AUTH_PERMISSIONS
    # the auth database is created (idempotently) before the server starts
    init = services["postgres-init"]
    assert "CREATE DATABASE" in str(init["command"]) and "MLFLOW_AUTH_DB" in str(init["command"])
    assert _default(init["environment"]["MLFLOW_AUTH_DB"]) == db
    assert init["environment"]["PGHOST"] == tracking_server.split(":")[0]
    assert mlflow["depends_on"]["postgres-init"]["condition"] == "service_completed_successfully"
    assert "ports" not in init


def test_env_example_has_the_auth_keys():
    example = _env_example()
    for var in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert example[var].startswith("change-me"), var
    assert example["MLFLOW_AUTH_ADMIN_USERNAME"]
    assert example["MLFLOW_AUTH_DEFAULT_PERMISSION"] in AUTH_PERMISSIONS
    assert example["MLFLOW_AUTH_DB"] != example["POSTGRES_DB"], "the auth store needs its own database"


def test_k8s_mlflow_basic_auth():
    deploy = _one("Deployment")
    (container,) = _containers(deploy["spec"]["template"])
    args = container["args"]
    assert args[0] == "server" and _has_basic_auth(args)
    for flag in ("--host=0.0.0.0", "--serve-artifacts"):
        assert flag in args, flag
    assert any(a.startswith("--artifacts-destination=") for a in args)
    assert any(a.startswith("--allowed-hosts=") for a in args)
    env = _env(container)
    assert _secret_ref(env["MLFLOW_BACKEND_STORE_URI"]) == ("mlflow-backend", "uri")
    secret_keys = {
        "MLFLOW_AUTH_DATABASE_URI": "database_uri",
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin_username",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "admin_password",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "flask_secret_key",
    }
    for var, key in secret_keys.items():
        assert _secret_ref(env[var]) == ("mlflow-auth", key), var
    assert env["MLFLOW_AUTH_DEFAULT_PERMISSION"]["value"] in AUTH_PERMISSIONS
    # the rendered config file lives on an in-memory volume
    config_dir = str(Path(env["MLFLOW_AUTH_CONFIG_PATH"]["value"]).parent)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mounts[config_dir]]["emptyDir"]["medium"] == "Memory"
    _assert_locked_down("mlflow", container.get("securityContext"))
    assert deploy["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_ray_head_logs_in_to_mlflow():
    for which, spec in _ray_cluster_specs():
        (head,) = _containers(spec["headGroupSpec"]["template"])
        env = _env(head)
        assert _secret_ref(env["MLFLOW_TRACKING_USERNAME"]) == (RAY_CLIENT_SECRET, "username"), which
        assert _secret_ref(env["MLFLOW_TRACKING_PASSWORD"]) == (RAY_CLIENT_SECRET, "password"), which
    # never through the runtime env: the dashboard shows it to anyone who can list jobs
    runtime_env = yaml.safe_load(_one("RayJob")["spec"]["runtimeEnvYAML"])
    assert not {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} & set(runtime_env.get("env_vars", {}))


def test_mlflow_image_has_the_auth_app():
    text = re.sub(r"\\\n", " ", MLFLOW_DOCKERFILE.read_text())
    assert re.search(r'pip install [^\n]*"mlflow\[auth\]==\$\{MLFLOW_VERSION\}"', text)
    assert re.search(r"^COPY entrypoint\.sh (\S+)$", text, flags=re.M)
    target = re.search(r"^COPY entrypoint\.sh (\S+)$", text, flags=re.M).group(1)
    assert re.search(rf'^ENTRYPOINT \["{re.escape(target)}"\]$', text, flags=re.M)
    assert re.findall(r"^USER (\S+)$", text, flags=re.M)[-1] == "1000"
    rules = [ln for ln in (INFRA / "mlflow" / ".dockerignore").read_text().splitlines() if ln and ln[0] != "#"]
    assert rules == ["*", "!entrypoint.sh"], "the build context must not carry .env"


def _run_entrypoint(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    stub = tmp_path / "bin" / "mlflow"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text('#!/bin/sh\necho "mlflow $*"\n')
    stub.chmod(0o755)
    path = f"{stub.parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
    return subprocess.run(
        ["sh", str(MLFLOW_ENTRYPOINT), *args], env={"PATH": path, **env}, capture_output=True, text=True, timeout=30
    )


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_mlflow_entrypoint_writes_the_auth_config(tmp_path: Path):
    config = tmp_path / "auth" / "basic_auth.ini"
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_DATABASE_URI": "postgresql://mlflow:p%40ss@postgres:5432/mlflow_auth",
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "a-long-100%-test-value",
        "MLFLOW_AUTH_DEFAULT_PERMISSION": "NO_PERMISSIONS",
    }
    done = _run_entrypoint(tmp_path, env, "server", "--app-name", "basic-auth")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "mlflow server --app-name basic-auth"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    parsed = configparser.ConfigParser()  # what MLflow's read_auth_config uses, interpolation included
    parsed.read(config)
    assert dict(parsed["mlflow"]) == {
        "default_permission": "NO_PERMISSIONS",
        "database_uri": env["MLFLOW_AUTH_DATABASE_URI"],
        "admin_username": "admin",
        "admin_password": env["MLFLOW_AUTH_ADMIN_PASSWORD"],
    }
    # the default, when unset, is READ
    done = _run_entrypoint(tmp_path, {k: v for k, v in env.items() if k != "MLFLOW_AUTH_DEFAULT_PERMISSION"}, "server")
    assert done.returncode == 0, done.stderr
    parsed.read(config)
    assert parsed["mlflow"]["default_permission"] == "READ"


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
@pytest.mark.parametrize(
    "change",
    [
        {"MLFLOW_AUTH_DEFAULT_PERMISSION": "EDIT"},
        {"MLFLOW_AUTH_DEFAULT_PERMISSION": "MANAGE"},
        {"MLFLOW_AUTH_ADMIN_PASSWORD": "change-me-mlflow-admin-password"},
        {"MLFLOW_FLASK_SERVER_SECRET_KEY": "change-me-mlflow-flask-secret-key"},
        {"MLFLOW_AUTH_ADMIN_PASSWORD": ""},
        {"MLFLOW_AUTH_ADMIN_PASSWORD": "two\nlines-of-text"},
        {"MLFLOW_AUTH_DATABASE_URI": ""},  # basic-auth without any config: MLflow would use a SQLite file
    ],
    ids=["edit", "manage", "placeholder-password", "placeholder-key", "no-password", "line-break", "no-config"],
)
def test_mlflow_entrypoint_refuses(tmp_path: Path, change: dict[str, str]):
    config = tmp_path / "basic_auth.ini"
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_DATABASE_URI": "postgresql://mlflow:x@postgres:5432/mlflow_auth",
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "a-long-test-value",
        **change,
    }
    if not env["MLFLOW_AUTH_DATABASE_URI"]:
        del env["MLFLOW_AUTH_CONFIG_PATH"], env["MLFLOW_AUTH_DATABASE_URI"]
    done = _run_entrypoint(tmp_path, env, "server", "--app-name=basic-auth")
    assert done.returncode != 0 and "mlflow server" not in done.stdout
    assert not config.exists()


# ----------------------------------------------------------------------------- security: NetworkPolicy


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector matches labels ({} matches everything)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _policies() -> list[dict[str, Any]]:
    return [d for _, d in _k8s_objects() if d["kind"] == "NetworkPolicy"]


def _pod_labels() -> dict[str, dict[str, str]]:
    """Labels of every pod template the manifests declare: the Ray groups and MLflow."""
    labels = {name: t["metadata"]["labels"] for name, t in _ray_pod_templates()}
    labels["mlflow"] = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    return labels


def _policies_for(labels: dict[str, str]) -> list[dict[str, Any]]:
    return [p for p in _policies() if p["spec"]["podSelector"] and _selects(p["spec"]["podSelector"], labels)]


def _same_namespace(peer: dict[str, Any]) -> bool:
    return set(peer) == {"podSelector"}


def _ports(rule: dict[str, Any]) -> set[tuple[str, int | None]]:
    return {(p.get("protocol", "TCP"), p.get("port")) for p in rule.get("ports", [])}


def test_network_policies_apply_to_the_namespace():
    policies = _policies()
    ns = _docs(K8S / "kustomization.yaml")[0]["namespace"]
    assert ns == _one("RayJob")["metadata"]["namespace"], "the RayJob's pods must fall under the policies"
    for p in policies:
        assert p["metadata"].get("namespace", ns) == ns, p["metadata"]["name"]
        types = p["spec"]["policyTypes"]
        assert "Ingress" in types, p["metadata"]["name"]
        assert "Egress" not in types or p["spec"].get("egress"), f"{p['metadata']['name']} would deny all egress"
        for rule in p["spec"].get("ingress", []):
            # a rule without `from` (or with an ipBlock) admits sources outside the cluster
            assert rule.get("from"), f"{p['metadata']['name']}: ingress rule open to every source"
            assert not any("ipBlock" in peer for peer in rule["from"]), p["metadata"]["name"]
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert len(deny) == 1, "one default-deny ingress policy for the whole namespace"


def test_network_policies_select_labels_the_pods_have():
    pods = _pod_labels()
    for p in _policies():
        selector = p["spec"]["podSelector"]
        if selector:
            name = p["metadata"]["name"]
            assert any(_selects(selector, labels) for labels in pods.values()), f"{name} selects no pod"
        for rule in p["spec"].get("ingress", []):
            for peer in rule["from"]:
                if _same_namespace(peer) and peer["podSelector"]:
                    assert any(_selects(peer["podSelector"], labels) for labels in pods.values()), peer
    for name, labels in pods.items():
        assert _policies_for(labels), f"no NetworkPolicy selects the {name} pods"


def test_ray_pods_take_connections_from_the_namespace_only():
    pods = _pod_labels()
    ray_pods = {name: labels for name, labels in pods.items() if name != "mlflow"}
    for name, labels in ray_pods.items():
        rules = [r for p in _policies_for(labels) for r in p["spec"].get("ingress", [])]
        assert rules, name
        # every TCP port from the Ray pods themselves (Ray's node-to-node ports are random)
        among = [
            r
            for r in rules
            if ("TCP", None) in _ports(r)
            and all(_same_namespace(peer) for peer in r["from"])
            and all(any(_selects(peer["podSelector"], other) for peer in r["from"]) for other in ray_pods.values())
        ]
        assert among, f"{name}: Ray pods must reach each other on every TCP port"
        for r in among:  # ... and from nothing else
            assert not any(_selects(peer["podSelector"], pods["mlflow"]) for peer in r["from"]), name
        # GCS, dashboard and client from pods of the namespace
        open_ports = {port for r in rules if all(_same_namespace(peer) for peer in r["from"]) for _, port in _ports(r)}
        assert set(RAY_PORTS.values()) <= open_ports, f"{name}: {open_ports}"
        # anything from outside the namespace: only the KubeRay operator, only the dashboard
        for r in rules:
            outside = [peer for peer in r["from"] if not _same_namespace(peer)]
            for peer in outside:
                ns_labels = peer["namespaceSelector"].get("matchLabels", {})
                assert set(ns_labels) == {"kubernetes.io/metadata.name"}, f"{name}: {peer} is not one namespace"
                assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "kuberay-operator"}
                assert _ports(r) == {("TCP", RAY_PORTS["dashboard"])}, f"{name}: the operator needs 8265 only"
    for which, spec in _ray_cluster_specs():  # the ports the policy names are the head's ports
        (head,) = _containers(spec["headGroupSpec"]["template"])
        assert {p["name"]: p["containerPort"] for p in head["ports"]} == RAY_PORTS, which
    # the MLflow pod is not opened up by the Ray policy
    assert all("component" not in str(p["spec"]["podSelector"]) for p in _policies_for(pods["mlflow"]))


def test_mlflow_takes_connections_from_the_namespace_only():
    deploy = _one("Deployment")
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    (container,) = _containers(deploy["spec"]["template"])
    (port,) = [p["containerPort"] for p in container["ports"]]
    rules = [r for p in _policies_for(labels) for r in p["spec"].get("ingress", [])]
    assert rules
    for r in rules:
        assert all(_same_namespace(peer) for peer in r["from"]), r
        assert _ports(r) == {("TCP", port)}, r
    assert _one("Service")["spec"]["ports"][0]["port"] == port == 5000


def test_selector_matching_examples():
    assert _selects({}, {"a": "1"})
    assert _selects({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"})
    assert not _selects({"matchLabels": {"a": "1", "c": "3"}}, {"a": "1"})
    assert _selects({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": "x"})
    assert not _selects({"matchExpressions": [{"key": "a", "operator": "In", "values": ["y"]}]}, {"a": "x"})


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
    # the Tune driver's MLflow login (basic-auth), MLflow's own credentials file, from outside the repo
    assert cfg["file_mounts"].get("~/.mlflow/credentials", "").startswith("~/")
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


def _secret_refs_in_manifests() -> set[tuple[str, str]]:
    """(Secret, key) of every required secretKeyRef and KubeRay authOptions in infra/k8s."""
    refs: set[tuple[str, str]] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("secretKeyRef")
            if isinstance(ref, dict) and not ref.get("optional", False):
                refs.add((ref["name"], ref["key"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for _, doc in _k8s_objects():
        walk(doc)
    for _, spec in _ray_cluster_specs():
        refs.add((spec["authOptions"]["secretName"], "auth_token"))
    return refs


def test_runbook_creates_every_secret_the_manifests_read():
    text = re.sub(r"\\\n\s*", " ", (INFRA / "README.md").read_text())
    created = {
        (name, key)
        for name, rest in re.findall(r"kubectl -n cktf create secret generic (\S+)([^\n]*)", text)
        for key in re.findall(r"--from-literal=(\w+)=", rest)
    }
    needed = _secret_refs_in_manifests()
    assert {("mlflow-auth", "admin_password"), (RAY_CLIENT_SECRET, "password")} <= needed
    assert needed <= created, needed - created
    # the auth store is a second database on the tracking store's server
    (tracking,) = re.findall(r'--from-literal=uri="postgresql://[^@"]+@([^/"]+)/(\w+)"', text)
    (auth,) = re.findall(r'--from-literal=database_uri="postgresql://[^@"]+@([^/"]+)/(\w+)"', text)
    assert tracking[0] == auth[0] and auth[1] == "mlflow_auth" != tracking[1]
    assert "CREATE DATABASE mlflow_auth" in text


def test_runbook_documents_security():
    text = (INFRA / "README.md").read_text()
    section = text.split("\n## Security\n", 1)[1]
    for needle in [
        "runAsNonRoot",  # 1. non-root Ray pods
        "allowPrivilegeEscalation: false",
        "--app-name basic-auth",  # 2. MLflow authentication
        "cktf-mlflow-auth",
        "networkpolicy.yaml",  # 3. NetworkPolicy
        "6379",
        "8265",
        "10001",
        "ray job submit",  # 4. the way in
        "kubectl port-forward",
        "docs/security.md",
    ]:
        assert needle in section, needle
    # how a client logs in, how users are made
    logins = ["MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "create_user(", "~/.cktf/mlflow-credentials"]
    for needle in logins:
        assert needle in text, needle
    assert (ROOT / "docs" / "security.md").is_file(), "the Security section points at docs/security.md"
