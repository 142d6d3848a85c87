"""``cktf campaign FILE.yaml``: the campaign driver. It executes a checked :class:`~.plan.CampaignPlan`.

Order of work (docs/campaigns.md):

1. The campaign's lease (one driver per campaign, :class:`~cktf.tune.run.lock.StudyLock`), its MLflow parent run
   (created once, reopened on ``--resume``) and ``state.json``.
2. The index decides what is left: a run it records as finished (or failed, unless ``--retry-failed``) is never run
   again; a run whose last epoch was reported but whose end the killed driver never saw is closed now.
3. When runs are left: Ray on loopback (or ``RAY_ADDRESS``), every distinct data put in the object store once, the
   teachers obtained once (:mod:`.teachers`: the teacher cache, or trained now), then one Tuner over the runs left,
   a grid of (pair, method, seed) points with the study's resources, fractional GPUs, checkpoints and retries; a run
   an earlier driver had started goes on from its last checkpoint (:mod:`.trainable`).
4. :func:`finish_campaign`: MLflow reconciled with the index, the table written (markdown, CSV, LaTeX, JSON, HTML)
   and logged to the parent run, the parent's status set (FINISHED only when every run has ended).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..tune.results.reader import FAILED, FINISHED, RUNNING, TERMINAL, TrialIndex, read_state, write_state
from ..tune.results.retention import release_trial
from ..tune.results.scratch import remove_study_scratch
from ..tune.results.store import StudyStore
from ..tune.results.tracking import Tracking, sync_study
from ..tune.run.lock import StudyLock
from .lineage import STEP_METRIC, CampaignCallback
from .plan import CampaignPlan

log = logging.getLogger(__name__)
VIEWS = ("live", "ray", "quiet")


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


def left_to_run(plan: CampaignPlan, store: StudyStore, retry_failed: bool = False) -> list:
    """The plan's runs the index does not record as ended (failed ones too with ``retry_failed``)."""
    index = TrialIndex(store)
    done = (FINISHED,) if retry_failed else TERMINAL
    return [r for r in plan.runs if index.get(r.key).get("status") not in done]


def _trial_dirname(trial: Any) -> str:
    return f"{trial.config['_point']['_key']}_{trial.trial_id}"


def _parent_run(client: Any, plan: CampaignPlan, state: dict[str, Any]) -> tuple[str, str]:
    from mlflow.entities import Param

    from ..tune.results.champion import mark_model_training
    from ..tune.results.lineage import git_commit

    cfg = plan.campaign
    exp = client.get_experiment_by_name(cfg.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(cfg.experiment)
    if state.get("parent_run_id"):
        client.update_run(state["parent_run_id"], status="RUNNING")
        client.set_tag(state["parent_run_id"], "cktf.campaign_status", "running")
        return exp_id, state["parent_run_id"]
    mark_model_training(client, exp_id)
    logged = cfg.logged()
    tags = {
        "cktf.kind": "campaign",
        "cktf.campaign": cfg.name,
        "cktf.campaign_dir": str(logged.get("workdir", cfg.workdir)).rstrip("/") + "/" + cfg.name,
        "cktf.campaign_status": "running",
        "mlflow.source.git.commit": git_commit(),
    }
    run = client.create_run(exp_id, run_name=f"campaign:{cfg.name}", tags=tags)
    params = {
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
    items = [Param(k, str(v)[:500]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i : i + 100])
    with tempfile.TemporaryDirectory() as tmp:
        resolved = Path(tmp) / "campaign.resolved.json"
        resolved.write_text(json.dumps(logged, indent=1, default=str))
        client.log_artifact(run.info.run_id, str(resolved), "campaign")
    if cfg.source:
        client.log_artifact(run.info.run_id, cfg.source, "campaign")
    return exp_id, run.info.run_id


def run_campaign(
    plan: CampaignPlan,
    resume: bool = False,
    retry_failed: bool = False,
    view: str = "live",
    lock: StudyLock | None = None,
    break_lock: bool = False,
    overrides: dict[str, Any] | None = None,
) -> CampaignOutcome:
    """Run (or resume) a planned campaign under its lease; see the module docstring."""
    from ..tune.run.driver import study_log

    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    cfg = plan.campaign
    store = StudyStore(cfg.campaign_dir)
    if read_state(store).get("parent_run_id") and not resume:
        raise ConfigError(
            "name",
            f"campaign {cfg.name!r} already exists in {store.uri}",
            "pass --resume to continue it, or a new name",
        )
    own = lock is None
    lock = lock or StudyLock(store, cfg.name).acquire(break_lock)
    try:
        with study_log(store, view) as log_path:
            return _run_locked(plan, store, lock, retry_failed, view, overrides or {}, log_path)
    finally:
        if own:
            lock.release()


def _run_locked(
    plan: CampaignPlan,
    store: StudyStore,
    lock: StudyLock,
    retry_failed: bool,
    view: str,
    overrides: dict[str, Any],
    log_path: str = "",
) -> CampaignOutcome:
    cfg = plan.campaign
    t0 = time.perf_counter()
    state = read_state(store)
    client = Tracking.shared(cfg.mlflow.tracking_uri, cfg.mlflow.retry_s)
    try:
        exp_id, parent_id = _parent_run(client, plan, state)
    except AttributeError:  # a DOWN answer has no experiment_id / info
        exp_id = parent_id = None
    if not client.up or not parent_id:
        raise ConfigError(
            "mlflow.tracking_uri",
            f"the tracking server at {cfg.mlflow.tracking_uri} does not answer (tried for {cfg.mlflow.retry_s:.0f} s)",
            "start it, or point mlflow.tracking_uri at one that runs",
        )
    if not state.get("parent_run_id"):
        store.write_json(cfg.logged(), "campaign.resolved.json")
    write_state(
        store,
        kind="campaign",
        parent_run_id=parent_id,
        experiment_id=exp_id,
        num_runs=plan.num_runs,
        runs=[r.key for r in plan.runs],
        score=cfg.table.score,
        overrides=state.get("overrides", overrides),
        status="running",
        stage="plan",
    )
    facts = run_facts(plan)
    callback = CampaignCallback(
        cfg.mlflow.tracking_uri,
        exp_id,
        parent_id,
        store.uri,
        cfg.name,
        facts,
        cfg.table.score,
        cfg.mlflow.retry_s,
        progress=view == "live",
        keep_state=cfg.keep_trial_state,
    )
    close_reported(plan, store, callback)
    pending = left_to_run(plan, store, retry_failed)
    if view == "live":
        print(
            f"campaign {cfg.name}: {plan.num_runs} runs, {plan.num_runs - len(pending)} already ended, "
            f"{len(pending)} to run; state in {store.uri}",
            flush=True,
        )
    interrupted = False
    try:
        if pending:
            _launch(plan, store, lock, pending, callback, view, log_path)
    except KeyboardInterrupt:
        log.warning("interrupted: the campaign stays incomplete and resumable")
        interrupted = True
    return finish_campaign(plan, store, time.perf_counter() - t0, interrupted, ran=len(pending))


def close_reported(plan: CampaignPlan, store: StudyStore, callback: CampaignCallback) -> list[str]:
    """Runs the index shows running with every epoch reported (their driver died before it saw them end): closed
    as finished now, not run again."""
    index = TrialIndex(store)
    closed = []
    for r in plan.runs:
        rec = index.get(r.key)
        if rec.get("status") == RUNNING and int(rec.get("iterations", 0)) >= callback.runs[r.key]["epochs"]:
            callback.finish(r.key, FINISHED)
            closed.append(r.key)
    if closed:
        log.info("closed %d run(s) whose last epoch was reported before the previous driver ended", len(closed))
    return closed


def _launch(
    plan: CampaignPlan, store: StudyStore, lock: StudyLock, pending: list, callback, view: str, log_path: str = ""
) -> None:
    import ray
    from ray import tune

    from ..train.teacher_cache import TeacherCache
    from ..tune.run.driver import fit_tuner, start_ray
    from ..tune.run.shared import shared_bytes, splits_to_shared
    from .teachers import obtain_teachers
    from .trainable import campaign_trial

    cfg = plan.campaign
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if view == "ray" else "0"
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(max(2, cfg.max_concurrent or 8)))
    started = start_ray(view == "ray", lock, log_path if view != "ray" and log_path else None)
    try:
        write_state(store, stage="data")
        needed = {r.data for r in pending}
        data_refs = {}
        for key in sorted(needed):
            shared = splits_to_shared(plan.splits[key])
            data_refs[key] = ray.put(shared)
            log.info("data %s in the object store: %.1f MB (once per node)", key, shared_bytes(shared) / 2**20)
        write_state(store, stage="teachers")
        pairs = {r.pair for r in pending}
        sub = _restrict(plan, pairs)
        teachers = obtain_teachers(sub, store, data_refs, TeacherCache(cfg.cache_root)) if sub.teachers else {}
        _tag_teachers(callback, store)
        launch = int(read_state(store).get("launches", 0)) + 1
        write_state(store, stage="runs", launches=launch)
        wrapped = tune.with_resources(
            tune.with_parameters(campaign_trial, cells=plan.cells, store=store, data=data_refs, teachers=teachers),
            {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu},
        )
        tuner = tune.Tuner(
            wrapped,
            param_space={"_point": tune.grid_search([r.trial_point() for r in pending])},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=cfg.max_concurrent or None,
                reuse_actors=False,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=f"launch-{launch}",
                storage_path=cfg.ray_storage,
                callbacks=[callback],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                verbose=1 if view == "ray" else 0,
            ),
        )
        fit_tuner(tuner)  # Ray's view of the outcome is not trusted: the index decides (finish_campaign)
    finally:
        if started:
            ray.shutdown()


def _restrict(plan: CampaignPlan, pairs: set[str]) -> CampaignPlan:
    """The plan with only the teachers of ``pairs`` (a resumed campaign needs only the teachers of its runs left)."""
    from dataclasses import replace

    return replace(plan, teachers={p: t for p, t in plan.teachers.items() if p in pairs})


def _tag_teachers(callback: CampaignCallback, store: StudyStore) -> None:
    facts = read_state(store).get("teachers") or {}
    parent = callback.parent_run_id
    for pair, f in facts.items():
        callback.client.set_tag(parent, f"cktf.teacher.{pair}", f"{f.get('source')}:{f.get('key', f.get('path', ''))}")
        if f.get("test_acc") is not None:
            callback.client.log_metric(parent, f"teacher/{pair}/test_acc", float(f["test_acc"]))


def finish_campaign(
    plan: CampaignPlan, store: StudyStore, wall_s: float, interrupted: bool = False, ran: int = 0
) -> CampaignOutcome:
    """MLflow made equal to the index, runs a dead driver left running marked so, the table written and logged, the
    campaign's status set: complete only when every run of the plan has ended (finished, or failed for good)."""
    from .render import write_table
    from .table import build_table

    cfg = plan.campaign
    client = Tracking.shared(cfg.mlflow.tracking_uri, cfg.mlflow.retry_s)
    state = read_state(store)
    parent_id = state["parent_run_id"]
    replayed = sync_study(client, store, state.get("experiment_id"), parent_id, STEP_METRIC)
    if any(replayed.values()):
        log.info("MLflow was behind the campaign index; caught up: %s", replayed)
    recs = {r["trial_id"]: r for r in TrialIndex(store).all()}
    for rec in recs.values():
        if rec.get("status") == RUNNING and rec.get("mlflow_run_id"):
            client.set_tag(rec["mlflow_run_id"], "cktf.status", "interrupted")
            client.set_terminated(rec["mlflow_run_id"], "KILLED")
    planned = [recs.get(r.key, {}) for r in plan.runs]
    counts = {s: sum(1 for r in planned if r.get("status") == s) for s in (FINISHED, FAILED, RUNNING)}
    counts["not started"] = sum(1 for r in planned if not r)
    complete = not interrupted and all(r.get("status") in TERMINAL for r in planned)
    status = "incomplete" if not complete else "failed" if counts[FINISHED] == 0 else "complete"
    table = build_table(plan, recs, state.get("teachers") or {}, status=status)
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
    client.set_tag(parent_id, "cktf.campaign_status", status)
    client.set_terminated(parent_id, {"complete": "FINISHED", "failed": "FAILED"}.get(status, "KILLED"))
    for rec in TrialIndex(store).all():  # a driver killed between a trial's end and its release left it whole
        if rec.get("status") in TERMINAL:
            release_trial(store.uri, rec, cfg.keep_trial_state)
    if complete:
        remove_study_scratch(store.uri)  # this node's working folders: nothing there is needed again
    write_state(store, status=status, stage="done" if complete else "stopped", counts=counts, finished_at=time.time())
    if not client.up:
        log.warning(
            "MLflow at %s is down: the campaign's results are in its index (%s); `--resume` replays them to MLflow",
            cfg.mlflow.tracking_uri,
            store.uri,
        )
    return CampaignOutcome(status, store.uri, plan.num_runs, counts, ran, wall_s, str(local), interrupted)


__all__ = ["CampaignOutcome", "finish_campaign", "left_to_run", "run_campaign", "run_facts"]
