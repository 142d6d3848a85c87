"""The real stack the cluster tests start and stop themselves, each on free 127.0.0.1 ports: PostgreSQL (run as the
``postgres`` system user, which it requires), an MLflow tracking server on it with proxied artifacts, an
S3-compatible endpoint (moto's server mode) and a multi-node Ray cluster (``ray.cluster_utils.Cluster``).

Every server is a process these helpers started; they stop only those, by pid, and wait for them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, what: str, timeout: float = 60.0, every: float = 0.2) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except Exception:  # not up yet
            pass
        time.sleep(every)
    raise TimeoutError(f"{what} did not come up in {timeout:.0f} s")


def _stop(proc: subprocess.Popen | None, timeout: float = 30.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.status == 200


class Postgres:
    """A throw-away PostgreSQL 15 cluster in a temporary folder owned by the ``postgres`` user."""

    def __init__(self, databases: tuple[str, ...] = ("mlflow",)):
        self.dir = Path(tempfile.mkdtemp(prefix="cktf-pg-"))
        self.port = free_port()
        self.databases = databases
        self.started = False

    def _as_postgres(self, *cmd: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True, **kw)

    def __enter__(self) -> Postgres:
        try:
            return self._start()
        except BaseException:  # a start that fails stops what it started and removes its folder
            self.__exit__()
            raise

    def _start(self) -> Postgres:
        shutil.chown(self.dir, "postgres")
        self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres")
        self._as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.dir / "data"),
            "-l",
            str(self.dir / "log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1",
            "start",
        )
        self.started = True
        for db in self.databases:
            subprocess.run(
                ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-c", f"create database {db};"],
                check=True,
                capture_output=True,
            )
        return self

    def uri(self, db: str = "mlflow") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{db}"

    def __exit__(self, *exc) -> None:
        try:
            if self.started:
                self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class Moto:
    """moto's S3-compatible server on a free port; ``env`` is what a client needs to reach it."""

    def __init__(self, buckets: tuple[str, ...] = ("studies", "mlart")):
        self.port, self.buckets, self.proc = free_port(), buckets, None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def __enter__(self) -> Moto:
        self.log = open(Path(tempfile.gettempdir()) / f"cktf-moto-{self.port}.log", "w")
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)], stdout=self.log, stderr=self.log
        )
        try:
            wait_until(lambda: _http_ok(self.endpoint + "/moto-api/"), "moto")
            s3 = self.client()
            for b in self.buckets:
                s3.create_bucket(Bucket=b)
        except BaseException:  # a start that fails stops what it started
            self.__exit__()
            raise
        return self

    def client(self):
        """A boto3 S3 client of this endpoint."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def objects(self, bucket: str, prefix: str = "") -> list[str]:
        s3 = self.client()
        keys = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return keys

    def __exit__(self, *exc) -> None:
        _stop(self.proc)
        self.log.close()


class MlflowServer:
    """``mlflow server`` on PostgreSQL with proxied artifacts (``--serve-artifacts``), the flags infra/ deploys.

    ``stop()`` and ``start()`` restart it on the same port (a tracking server restarting mid-study)."""

    def __init__(self, backend_uri: str, artifacts: str, env: dict[str, str] | None = None, auth_db: str | None = None):
        self.backend_uri, self.artifacts, self.env = backend_uri, artifacts, dict(env or {})
        self.port, self.proc = free_port(), None
        self.log = Path(tempfile.gettempdir()) / f"cktf-mlflow-{self.port}.log"
        self.auth_db = auth_db
        if auth_db:  # MLflow's own authentication, as infra/ deploys it (--app-name basic-auth)
            import secrets

            self.password = secrets.token_hex(12)
            ini = Path(tempfile.mkdtemp(prefix="cktf-mlflow-auth-")) / "auth.ini"
            ini.write_text(
                "[mlflow]\ndefault_permission = READ\n"
                f"database_uri = {auth_db}\nadmin_username = admin\nadmin_password = {self.password}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            )
            self.env.update(MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16))

    @property
    def client_env(self) -> dict[str, str]:
        """What a client needs to log in (empty without authentication)."""
        if not self.auth_db:
            return {}
        return {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": self.password}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [
            str(VENV_BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--backend-store-uri",
            self.backend_uri,
            "--serve-artifacts",
            "--artifacts-destination",
            self.artifacts,
            "--workers",
            "1",
        ]
        if self.auth_db:
            cmd += ["--app-name", "basic-auth"]
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(cmd, env={**os.environ, **self.env}, stdout=log, stderr=log)
        try:
            wait_until(lambda: _http_ok(self.url + "/health"), "the MLflow server", timeout=120)
        except BaseException:  # a start that fails stops what it started
            self.stop()
            raise

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def __enter__(self) -> MlflowServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class RayCluster:
    """A head and ``workers`` worker nodes on 127.0.0.1, each with its own raylet and object store, made by Ray's
    own test harness (``ray.cluster_utils.Cluster``, which Ray's fault-tolerance tests use). The head takes no
    trials (0 CPUs), as infra/ deploys it.

    The harness runs in a child process of its own (``tests/cluster_proc.py``): Ray reads settings such as
    ``RAY_AUTH_MODE`` once per process, so a token-authenticated cluster cannot share the test process's Ray.
    ``remove(i)`` removes worker ``i`` (its raylet and workers end: a lost node)."""

    def __init__(
        self,
        workers: int = 2,
        cpus: int = 2,
        gpus: int = 0,
        object_store_mb: int = 150,
        dashboard: bool = False,
        env: dict[str, str] | None = None,
    ):
        self.spec = {
            "workers": workers,
            "cpus": cpus,
            "gpus": gpus,
            "object_store_mb": object_store_mb,
            "dashboard_port": free_port() if dashboard else None,
        }
        self.env = env or {}
        self.proc: subprocess.Popen | None = None

    def _ask(self, **command) -> dict:
        import json

        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self._line(timeout=180)
        if not line:
            raise RuntimeError(f"the cluster process ended: {self.log.read_text()[-3000:]}")
        return json.loads(line)

    def __enter__(self) -> RayCluster:
        import json

        self.log = Path(tempfile.mkdtemp(prefix="cktf-cluster-")) / "cluster.log"
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", **self.env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        env.pop("RAY_ADDRESS", None)
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("cluster_proc.py")), json.dumps(self.spec)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.log, "w"),
            text=True,
        )
        try:
            line = self._line(timeout=180)
            if not line:
                raise RuntimeError(f"the cluster did not start: {self.log.read_text()[-3000:]}")
            self.info = json.loads(line)
        except BaseException:  # a start that fails (or never answers) stops what it started
            self.__exit__()
            raise
        return self

    def _line(self, timeout: float) -> str:
        """The cluster process's next line, or a TimeoutError when none comes in ``timeout`` seconds."""
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"the cluster said nothing in {timeout:.0f} s: {self.log.read_text()[-3000:]}")
        return self.proc.stdout.readline()

    @property
    def address(self) -> str:
        return self.info["address"]

    @property
    def node_ids(self) -> list[str]:
        """The worker nodes' ids (hex), in the order they were added."""
        return self.info["workers"]

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.spec['dashboard_port']}"

    def remove(self, i: int) -> None:
        self._ask(cmd="remove", index=i)

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self._ask(cmd="stop")
            except (OSError, RuntimeError):
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
