"""``cktf campaign FILE.yaml``: a campaign on the run context, as one grid stage over its runs, then the table.

Order of work (docs/campaigns.md):

1. In a :class:`~cktf.tune.run.context.RunContext` (one driver per campaign, ``driver.log``): the MLflow parent run
   (created once, reopened on ``--resume``) and ``state.json``.
2. The index decides what is left: a run it records as finished (or failed, unless ``--retry-failed``) is never run
   again; a run whose last epoch was reported but whose end the killed driver never saw is closed now.
3. When runs are left: Ray on loopback (or ``RAY_ADDRESS``), every distinct data in the object store once, the
   teachers obtained once (:mod:`.teachers`, through the teacher service), then one
   :class:`~cktf.tune.run.stages.GridStage` over the runs left, with the run's resources, fractional GPUs,
   checkpoints and retries; a run an earlier driver had started goes on from its last checkpoint.
4. :func:`finish_campaign`: MLflow reconciled with the index, the table written (markdown, CSV, LaTeX, JSON, HTML)
   and logged to the parent run, the parent's status set (FINISHED only when every run has ended).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..tune.results.lineage import ParentRun, StageLineage, TrialCallback, TrialLabels
from ..tune.results.reader import FAILED, FINISHED, RUNNING, TERMINAL, TrialIndex
from ..tune.run.context import RunContext, RunOptions
from .plan import CampaignPlan
from .table import SCORE_METRIC, run_scores

log = logging.getLogger(__name__)

#: the stage of a campaign's records in the index
RUNS = "runs"


@dataclass
class CampaignOutcome:
    status: str  # complete | failed (every run failed) | incomplete
    campaign_dir: str
    num_runs: int
    counts: dict[str, int]
    ran: int  # runs launched by this driver
    wall_s: float
    table_dir: str = ""
    interrupted: bool = False

    @property
    def complete(self) -> bool:
        return self.status == "complete"


@dataclass(frozen=True)
class CampaignLineage(StageLineage):
    """A campaign's runs: keyed by their point (``pair.method.s<seed>``, stable across drivers), tagged with the
    pair, method and seed; a run that ends early failed (nothing prunes a campaign); when one ends, its test
    accuracies by protocol (the table's numbers)."""

    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    score: str = "selected"

    def describe(self, key: str, trial: Any, index: TrialIndex, parent: ParentRun) -> TrialLabels:
        run = self.runs[key]
        facts = {k: run[k] for k in ("pair", "label", "distiller", "seed", "cell")}
        tags = {
            "mlflow.parentRunId": parent.parent_run_id,
            "cktf.parent": parent.parent_run_id,
            "cktf.kind": "campaign_run",
            "cktf.campaign": parent.name,
            "cktf.trial_id": key,
            "cktf.run_key": key,
            "cktf.pair": run["pair"],
            "cktf.method": run["label"],
            "cktf.distiller": run["distiller"],
            "cktf.seed": str(run["seed"]),
        }
        record = {**facts, "stage": RUNS, "head": key}
        return TrialLabels(run["params"], record, f"{run['pair']} {run['label']} s{run['seed']}", tags, run["params"])

    def epochs_of(self, key: str) -> int:
        return int(self.runs[key]["epochs"])

    def end_metrics(self, record: dict[str, Any], status: str) -> dict[str, float]:
        scores = run_scores(record.get("history", [])) if status == FINISHED else {}
        out = {
            f"campaign/test_acc_{k}" if k != "selected_epoch" else "campaign/selected_epoch": float(v)
            for k, v in scores.items()
        }
        if self.score in scores:
            out[SCORE_METRIC] = float(scores[self.score])
        return out


def run_facts(plan: CampaignPlan) -> dict[str, dict[str, Any]]:
    """What the index and MLflow record of each run: names, seed, epochs and its parameters."""
    out = {}
    for r in plan.runs:
        study = plan.cells[r.cell]
        teacher = (
            (plan.teachers.get(r.pair).arch if r.pair in plan.teachers else "") if study.objective.needs_teacher else ""
        )
        params = {
            "pair": r.pair,
            "method": r.label,
            "distiller": study.distiller,
            "student": study.student,
            "teacher": teacher,
            "dataset": study.data.dataset,
            "seed": r.seed,
            "epochs": study.train.epochs,
            **{k: v for k, v in study.params.items()},
            **r.point,
        }
        out[r.key] = {
            "key": r.key,
            "pair": r.pair,
            "label": r.label,
            "distiller": study.distiller,
            "seed": r.seed,
            "cell": r.cell,
            "epochs": study.train.epochs,
            "params": params,
        }
    return out


def left_to_run(plan: CampaignPlan, store: Any, retry_failed: bool = False) -> list:
    """The plan's runs the index does not record as ended (failed ones too with ``retry_failed``)."""
    index = TrialIndex(store)
    done = (FINISHED,) if retry_failed else TERMINAL
    return [r for r in plan.runs if index.get(r.key).get("status") not in done]


def parent_params(plan: CampaignPlan) -> dict[str, Any]:
    cfg, logged = plan.campaign, plan.campaign.logged()
    return {
        "num_runs": plan.num_runs,
        "pairs": json.dumps([p.label for p in cfg.pairs]),
        "methods": json.dumps(plan.labels),
        "seeds": json.dumps(cfg.seeds),
        "score": cfg.table.score,
        "resources": json.dumps(logged["resources"]),
        "max_concurrent": cfg.max_concurrent,
        **{f"optim.{k}": v for k, v in logged["optim"].items()},
        **{f"train.{k}": v for k, v in logged["train"].items() if k in ("epochs", "batch_size", "bf16")},
        **{f"teacher.{k}": v for k, v in logged["teacher"]["train"].items() if k in ("epochs", "batch_size")},
    }


def lineage(plan: CampaignPlan, facts: dict[str, dict[str, Any]]) -> CampaignLineage:
    epochs = max((f["epochs"] for f in facts.values()), default=1)
    return CampaignLineage(stage=RUNS, epochs=epochs, runs=facts, score=plan.campaign.table.score, early=FAILED)


def run_campaign(plan: CampaignPlan, options: RunOptions | None = None, lock: Any = None) -> CampaignOutcome:
    """Run (or resume) a planned campaign under its lease; see the module docstring."""
    with RunContext(plan.campaign, options, lock) as ctx:
        return run_in(ctx, plan)


def run_in(ctx: RunContext, plan: CampaignPlan) -> CampaignOutcome:
    """The campaign's stage in an entered run context (the command line enters it before planning)."""
    ctx.begin()
    from ..tune.run.stages import GridStage, point_dirname
    from ..tune.run.trainable import TrialInputs, run_trial

    cfg = plan.campaign
    ctx.open_parent({}, parent_params(plan))
    ctx.write_state(
        num_runs=plan.num_runs,
        runs=[r.key for r in plan.runs],
        score=cfg.table.score,
        overrides=dict(ctx.options.overrides) or ctx.state.get("overrides", {}),
        status="running",
        stage="plan",
    )
    facts = run_facts(plan)
    closed = close_reported(plan, ctx, facts)
    pending = left_to_run(plan, ctx.store, ctx.options.retry_failed)
    ctx.say(
        f"campaign {cfg.name}: {plan.num_runs} runs, {plan.num_runs - len(pending)} already ended"
        f"{f' ({closed} closed now)' if closed else ''}, {len(pending)} to run; state in {ctx.store.uri}"
    )
    interrupted = False
    try:
        if pending:
            ctx.start_ray()
            refs = _share(ctx, plan, pending)
            launch = int(ctx.state.get("launches", 0)) + 1
            ctx.write_state(stage="runs", launches=launch)
            stage = GridStage(
                name=f"launch-{launch}",
                trainable=run_trial,
                shared={"inputs": TrialInputs(ctx.store, cells=plan.cells, **refs)},
                lineage=lineage(plan, facts),
                count=len(pending),
                points=tuple(r.trial_point() for r in pending),
                dirname=point_dirname,
                restorable=False,  # what is left is decided again from the index on every launch
            )
            ctx.fit(stage)
    except KeyboardInterrupt:
        log.warning("interrupted: the campaign stays incomplete and resumable")
        interrupted = True
    return finish_campaign(ctx, plan, interrupted, ran=len(pending))


def _share(ctx: RunContext, plan: CampaignPlan, pending: list) -> dict[str, Any]:
    """Every distinct data the runs left need, and their pairs' teachers, in the object store once."""
    from ..train.teacher_cache import TeacherCache
    from ..tune.run.shared import shared_bytes, splits_to_shared
    from ..tune.run.teacher import obtain_teachers

    ctx.write_state(stage="data")
    data = {}
    for key in sorted({r.data for r in pending}):
        shared = splits_to_shared(plan.splits[key])
        data[key] = ctx.share(f"data/{key}", shared, f"data {key}: {shared_bytes(shared) / 2**20:.1f} MB")
    ctx.write_state(stage="teachers")
    sub = replace(plan, teachers={p: t for p, t in plan.teachers.items() if p in {r.pair for r in pending}})
    teachers = obtain_teachers(sub, ctx.store, data, TeacherCache(plan.campaign.cache_root)) if sub.teachers else {}
    for pair, f in (ctx.state.get("teachers") or {}).items():
        parent = ctx.parent.parent_run_id
        ctx.client.set_tag(parent, f"cktf.teacher.{pair}", f"{f.get('source')}:{f.get('key', f.get('path', ''))}")
        if f.get("test_acc") is not None:
            ctx.client.log_metric(parent, f"teacher/{pair}/test_acc", float(f["test_acc"]))
    return {"data": data, "teacher": teachers}


def close_reported(plan: CampaignPlan, ctx: RunContext, facts: dict[str, dict[str, Any]]) -> int:
    """Runs the index shows running with every epoch reported (their driver died before it saw them end): closed
    as finished now, not run again."""
    index = TrialIndex(ctx.store)
    callback = TrialCallback(ctx.parent, lineage(plan, facts))
    closed = 0
    for r in plan.runs:
        rec = index.get(r.key)
        if rec.get("status") == RUNNING and int(rec.get("iterations", 0)) >= facts[r.key]["epochs"]:
            callback.end(r.key, FINISHED)
            closed += 1
    if closed:
        log.info("closed %d run(s) whose last epoch was reported before the previous driver ended", closed)
    return closed


def finish_campaign(ctx: RunContext, plan: CampaignPlan, interrupted: bool = False, ran: int = 0) -> CampaignOutcome:
    """MLflow made equal to the index, runs a stopped driver left running marked so, the table written and logged,
    the campaign's status set: complete only when every run of the plan has ended (finished, or failed for good)."""
    from .render import write_table
    from .table import build_table

    ctx.reconcile()
    client, parent_id, store = ctx.client, ctx.parent.parent_run_id, ctx.store
    recs = {r["trial_id"]: r for r in TrialIndex(store).all()}
    planned = [recs.get(r.key, {}) for r in plan.runs]
    counts = {s: sum(1 for r in planned if r.get("status") == s) for s in (FINISHED, FAILED, RUNNING)}
    counts["not started"] = sum(1 for r in planned if not r)
    complete = not interrupted and all(r.get("status") in TERMINAL for r in planned)
    status = "incomplete" if not complete else "failed" if counts[FINISHED] == 0 else "complete"
    table = build_table(plan, recs, ctx.state.get("teachers") or {}, status=status)
    local = store.local_path("table") or Path(tempfile.mkdtemp(prefix="cktf-table-"))
    write_table(table, local)
    if store.local_path("table") is None:
        store.upload(local, "table")
    client.log_artifacts(parent_id, str(local), "table")
    client.set_tag(parent_id, "cktf.table", "table/table.html")
    for cell in table.cells.values():
        if cell.spread is not None:
            client.log_metric(parent_id, f"table/{cell.pair}/{cell.slug}/mean", cell.spread.mean)
            client.log_metric(parent_id, f"table/{cell.pair}/{cell.slug}/std", cell.spread.std)
    for name, n in counts.items():
        client.log_metric(parent_id, f"runs_{name.replace(' ', '_')}", n)
    ctx.close(status, counts, "`cktf campaign FILE --resume` replays them to MLflow")
    return CampaignOutcome(status, store.uri, plan.num_runs, counts, ran, ctx.wall_s, str(local), interrupted)


__all__ = ["CampaignOutcome", "finish_campaign", "left_to_run", "run_campaign", "run_facts", "run_in"]
