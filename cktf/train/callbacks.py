"""Run callbacks: hooks the trainer calls at the start, after each epoch and at the end of a run.

The Tune layer adds its own (``tune.report``); :class:`MLflowCallback` logs a single run to MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar


class Callback:
    """No-op base; override what you need.

    In a data-parallel run (docs/algorithm.md §12) rank 0 alone calls a callback, unless its class sets
    :attr:`all_ranks`: then every worker calls it with the same (global) metrics, and on the workers other than rank 0,
    which write nothing, ``on_checkpoint`` comes right after ``on_epoch_end``.
    """

    #: called on every worker of a data-parallel run, not on rank 0 alone (e.g. a reporter every worker must call)
    all_ranks: ClassVar[bool] = False

    def on_run_start(self, config: dict[str, Any], info: dict[str, Any]) -> None: ...

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def on_checkpoint(self, epoch: int, metrics: dict[str, float]) -> None:
        """Epoch ``epoch``'s checkpoint is complete on disk. Called from the checkpoint writer's thread (after
        ``on_epoch_end`` of the same epoch, possibly during the next epoch), with a copy of the metrics."""

    def on_run_end(self, summary: dict[str, Any]) -> None: ...

    def on_run_error(self, exc: BaseException) -> None: ...


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.05}}`` -> ``{"optim.lr": 0.05}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class MLflowCallback(Callback):
    """Logs params, per-epoch metrics (``step=epoch``) and the final status of one run.

    The run id is kept in ``out_dir/mlflow_run_id`` so a resumed run logs into the same MLflow run.
    """

    def __init__(self, out_dir: str | Path, tracking_uri: str = "sqlite:///mlflow.db", experiment: str = "cktf"):
        import mlflow

        self.out_dir = Path(out_dir)
        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
        self.run_id: str | None = None

    def on_run_start(self, config: dict[str, Any], info: dict[str, Any]) -> None:
        id_file = self.out_dir / "mlflow_run_id"
        if id_file.exists():
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
            return
        run = self.client.create_run(
            self.experiment_id, run_name=self.out_dir.name, tags={"cktf.out_dir": str(self.out_dir)}
        )
        self.run_id = run.info.run_id
        self.out_dir.mkdir(parents=True, exist_ok=True)
        id_file.write_text(self.run_id)
        params = {k: str(v)[:500] for k, v in flatten({**config, **info}).items()}
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, epoch) for k, v in metrics.items() if isinstance(v, (int, float))]
        self.client.log_batch(self.run_id, metrics=batch)

    def on_run_end(self, summary: dict[str, Any]) -> None:
        for k, v in summary.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.client.log_metric(self.run_id, f"final/{k}", float(v))
        self.client.set_terminated(self.run_id, status="FINISHED")

    def on_run_error(self, exc: BaseException) -> None:
        if self.run_id:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            self.client.set_tag(self.run_id, "cktf.error", f"{type(exc).__name__}: {exc}"[:5000])
            self.client.set_terminated(self.run_id, status=status)
