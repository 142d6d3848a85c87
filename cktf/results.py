"""What a study or a campaign found, as Python objects for notebooks (docs/python-api.md).

:class:`StudyResults` wraps a study's folder (finished, or running: it reads the trial index as it stands):
``.best`` (the study's best, as every output gives it), ``.trials`` (a pandas DataFrame, one row per trial), the
confirmation, ``.summary()``, ``.report()`` and ``.export(path)``. :class:`CampaignResults` gives a campaign's runs and
its table as DataFrames. :func:`cktf.api.run_study` and :func:`cktf.api.run_campaign` return them;
:func:`open_study` and :func:`open_campaign` open a folder, a study file or a name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class StudyResults:
    """A study's results (see the module docstring). ``outcome``: how the run that returned it ended (exit status,
    counts, wall time), when it came from :func:`cktf.api.run_study`."""

    def __init__(self, folder: str | os.PathLike, outcome: Any = None):
        from .tune.results.reader import StudyResults as Reader

        self.reader = Reader(folder)
        self.outcome = outcome

    def __repr__(self) -> str:
        best = self.best
        score = f", best score {best['score']:.2f}" if best else ""
        return f"<cktf study {self.name}: {self.status}, {len(self.reader.trials())} trials{score}>"

    @property
    def name(self) -> str:
        return self.reader.name

    @property
    def folder(self) -> str:
        return self.reader.study_dir

    @property
    def status(self) -> str:
        """``complete``, ``incomplete``, ``failed`` (every trial failed) or ``running``."""
        return self.outcome.status if self.outcome is not None else self.reader.state.get("status", "running")

    @property
    def headline(self) -> str:
        return self.summary()["headline"]

    @property
    def best(self) -> dict[str, Any] | None:
        """The study's best: its configuration, ``score`` (over the confirmation's seeds where there is one, with
        ``std`` and ``seeds``), its test accuracy (``test``), and the trial whose weights are its student."""
        return self.summary()["best"]

    def summary(self, top_k: int = 10) -> dict[str, Any]:
        """Everything ``cktf report`` says, as a dict (:func:`cktf.tune.results.report.summarize`)."""
        from .tune.results.report import summarize

        return summarize(self.reader, top_k)

    @property
    def trials(self):
        """One row per trial (the search's, then the confirmation's runs): its stage, status, score, every searched
        value, epochs, test accuracy at its selected epoch and MLflow run id; sorted best first within a stage."""
        import pandas as pd

        from .tune.results.reader import CONFIRM

        searched = sorted({k for t in self.reader.trials() for k in t.config})
        rows = []
        ranked = self.reader.ranked() + sorted(self.reader.confirm_trials(), key=self.reader.sort_key)
        for t in ranked:
            rec = t.record
            rows.append(
                {
                    "trial": t.trial_id,
                    "name": rec.get("head", ""),
                    "stage": rec.get("stage", "search"),
                    "status": t.status,
                    "score": t.score,
                    **{k: t.config.get(k) for k in searched},
                    "epochs": t.epochs,
                    "selected_epoch": t.epoch,
                    self.reader.test_metric: t.test,
                    "baseline": t.baseline,
                    "group": rec.get("group") if rec.get("stage") == CONFIRM else None,
                    "seed": rec.get("seed") if rec.get("stage") == CONFIRM else None,
                    "mlflow_run_id": rec.get("mlflow_run_id"),
                }
            )
        return pd.DataFrame(rows)

    @property
    def confirmation(self):
        """One row per confirmed configuration: its group, mean ± std over its seeds, n, and whether it is the
        official defaults (empty without a confirmation stage)."""
        import pandas as pd

        return pd.DataFrame(
            [
                {"group": c.group, "baseline": c.baseline, "mean": c.spread.mean, "std": c.spread.std, "n": c.spread.n}
                for c in self.reader.confirmation()
                if c.spread is not None
            ]
        )

    def report(self, top_k: int = 10) -> Path:
        """Write the report (``report/``: markdown, HTML, plots); returns its folder."""
        from .tune.results.report import write_report

        return write_report(self.reader, top_k)

    def export(self, path: str | os.PathLike, onnx: bool = False) -> dict[str, Any]:
        """The study's student as ``path`` (.safetensors) and its ``.json``; returns the metadata."""
        from .tune.results.export import export_best

        return export_best(self.folder, path, onnx=onnx)


class CampaignResults:
    """A campaign's results: ``.runs`` (one row per run) and ``.table`` (one row per cell: mean ± std over seeds and
    the published number), read from its folder."""

    def __init__(self, folder: str | os.PathLike, outcome: Any = None):
        from .tune.results.store import StudyStore

        self.store = StudyStore(folder)
        self.outcome = outcome

    def __repr__(self) -> str:
        return f"<cktf campaign {self.name}: {self.status}>"

    @property
    def name(self) -> str:
        return self.store.uri.rstrip("/").rsplit("/", 1)[-1]

    @property
    def status(self) -> str:
        from .tune.results.reader import read_state

        return self.outcome.status if self.outcome is not None else read_state(self.store).get("status", "running")

    @property
    def runs(self):
        import pandas as pd

        from .tune.results.reader import TrialIndex

        return pd.DataFrame(
            [
                {
                    "run": r["trial_id"],
                    "pair": r.get("pair"),
                    "method": r.get("label"),
                    "seed": r.get("seed"),
                    "status": r.get("status"),
                    "epochs": len(r.get("history", [])),
                    **{k: v for k, v in (r.get("end_metrics") or {}).items()},
                    "mlflow_run_id": r.get("mlflow_run_id"),
                }
                for r in TrialIndex(self.store).all()
            ]
        )

    @property
    def table(self):
        import pandas as pd

        table = self.store.read_json("table", "table.json", default={}) or {}
        return pd.DataFrame(table.get("cells", []))


def open_study(study: str | os.PathLike, workdir: str = "runs/studies") -> StudyResults:
    """A study's results from its folder (local or ``s3://``), its YAML file or its name under ``workdir``."""
    from .tune.results.reader import resolve_study_dir

    return StudyResults(resolve_study_dir(study, workdir))


def open_campaign(campaign: str | os.PathLike, workdir: str = "runs/campaigns") -> CampaignResults:
    """A campaign's results from its folder, its YAML file or its name under ``workdir``."""
    from .errors import ConfigError

    text = str(campaign)
    if text.endswith((".yaml", ".yml")) and Path(text).is_file():
        from .campaign.schema import load_campaign

        return CampaignResults(load_campaign(text).folder)
    for cand in (Path(text), Path(workdir) / text):
        if (cand / "state.json").exists():
            return CampaignResults(cand.resolve())
    if "://" in text:
        return CampaignResults(text)
    raise ConfigError("campaign", f"no campaign found at {campaign} (nor under {workdir}/)", "pass its folder or file")


__all__ = ["CampaignResults", "StudyResults", "open_campaign", "open_study"]
