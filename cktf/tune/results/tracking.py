"""MLflow as the driver talks to it: calls that survive a tracking server's restart, a study that survives its
absence, and the replay of what MLflow missed from the trial index (``cktf mlflow-sync``).

The trial index is the source of truth (docs/architecture.md); MLflow is a view of it. So:

* :class:`Tracking` wraps an ``MlflowClient``: a call that fails for a transient reason (the server is unreachable,
  restarting, answers 5xx) is retried with backoff for up to ``budget_s`` seconds. A server that stays down longer
  is reported once, clearly; the study goes on (its results stay in the index) and later calls are skipped, except
  one attempt every :data:`RECHECK_S` seconds. When the server answers again, ``on_back`` replays what it missed.

What MLflow missed is replayed from the index by :func:`~.mlflow_runs.sync_study`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
#: while the server is down, one call in this many seconds tries it again
RECHECK_S = 15.0
#: how long a call keeps retrying before the server counts as down
DEFAULT_BUDGET_S = 60.0


def quiet_mlflow_retries() -> None:
    """Our own budget decides how long a call retries: MLflow's client would block the Tune loop for minutes."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")


def transient(exc: BaseException) -> bool:
    """The server could not be reached or answered an error of its own (not a bad request)."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError)):
        return True
    if isinstance(exc, MlflowException):
        text = str(exc)
        return "API request to" in text or exc.error_code in ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR")
    return False


class Tracking:
    """An ``MlflowClient`` whose calls retry through a restart and degrade to no-ops while the server is down.

    ``client.log_batch(...)`` etc. return the client's result, or :data:`DOWN` (falsy) when the server is down.
    """

    def __init__(self, tracking_uri: str, budget_s: float = DEFAULT_BUDGET_S):
        self.tracking_uri, self.budget_s = tracking_uri, float(budget_s)
        self.down_since: float | None = None
        self.missed = 0
        self.on_back: Callable[[], None] | None = None
        self._client = None
        self._last_try = 0.0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "on_back": None}

    @classmethod
    def shared(cls, tracking_uri: str, budget_s: float = DEFAULT_BUDGET_S) -> Tracking:
        """The process's one :class:`Tracking` for ``tracking_uri``: the driver's callback and its final steps see
        the same outage (reported once) and the same recovery."""
        found = _SHARED.get(tracking_uri)
        if found is None:
            found = _SHARED[tracking_uri] = cls(tracking_uri, budget_s)
        found.budget_s = float(budget_s)
        return found

    @property
    def client(self):
        if self._client is None:
            import mlflow

            quiet_mlflow_retries()
            self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def up(self) -> bool:
        return self.down_since is None

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        method = getattr(self.client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._call(name, method, args, kwargs)

        return call

    def _call(self, name: str, method: Callable, args: tuple, kwargs: dict) -> Any:
        if self.down_since is not None and time.time() - self._last_try < RECHECK_S:
            self.missed += 1
            return DOWN
        deadline = time.time() + (self.budget_s if self.down_since is None else 0.0)
        delay = 0.5
        while True:
            try:
                result = method(*args, **kwargs)
            except Exception as exc:
                if not transient(exc):
                    raise
                if delay == 0.5 and self.down_since is None:  # the first failure of this call: a line in the log
                    log.info(
                        "MLflow call %s did not go through (%s); retrying for up to %.0f s",
                        name,
                        _short(exc),
                        self.budget_s,
                    )
                if time.time() + delay <= deadline:
                    time.sleep(delay)
                    delay = min(2 * delay, 8.0)
                    continue
                self._went_down(name, exc)
                return DOWN
            if self.down_since is not None:
                self._came_back()
            return result

    def _went_down(self, name: str, exc: BaseException) -> None:
        self._last_try = time.time()
        self.missed += 1
        if self.down_since is None:
            self.down_since = time.time()
            log.warning(
                "MLflow at %s has not answered for %.0f s (%s: %s). Training goes on and the trial index keeps every "
                "result; they reach MLflow when it is back, or with `cktf mlflow-sync STUDY`.",
                self.tracking_uri,
                self.budget_s,
                name,
                str(exc).splitlines()[0][:200],
            )

    def _came_back(self) -> None:
        gone = time.time() - (self.down_since or time.time())
        self.down_since = None
        log.warning("MLflow at %s answers again after %.0f s; replaying what it missed", self.tracking_uri, gone)
        if self.on_back is not None:
            self.on_back()


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}" if str(exc) else type(exc).__name__


_SHARED: dict[str, Tracking] = {}


class _Down:
    """What a call returns while the tracking server is down: falsy, and nothing to read."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "DOWN"


DOWN = _Down()


__all__ = ["DEFAULT_BUDGET_S", "DOWN", "Tracking", "quiet_mlflow_retries", "transient"]
