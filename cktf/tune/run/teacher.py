"""The study's teacher, obtained once: the given checkpoint, the study's saved one, library or local weights used as
they are (``teacher.weights`` without ``finetune``), or trained now as one Ray task (from ``teacher.weights`` with
``finetune``, else from scratch).

The teacher is saved as ``teacher.safetensors`` in the study's store and reused on resume; every trial receives it
through the object store (:mod:`.shared`), never from disk.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from ...distillers import SUPERVISED
from ...registry import import_plugins
from ...train.config import RunConfig
from ...train.teacher_cache import TeacherCache, TeacherKey, same_but_code
from ..plan.schema import StudyConfig
from ..plan.validate import StudyPlan
from ..results.reader import read_state, write_state
from ..results.store import StudyStore

log = logging.getLogger(__name__)
TEACHER_FILE = "teacher.safetensors"


def teacher_run_config(cfg: StudyConfig, out_dir: str) -> RunConfig:
    """The teacher's single-run config: plain cross-entropy on the source data (the study's data by default)."""
    return RunConfig(
        student=cfg.teacher.arch or "",
        student_weights=cfg.teacher.weights,  # with finetune: trained from them (a fresh head for other classes)
        download=cfg.teacher.download,
        distiller=SUPERVISED,
        data=cfg.teacher.data or cfg.data,
        optim=cfg.teacher.optim,
        train=cfg.teacher.train.replace(progress=False),
        out_dir=out_dir,
    )


def as_is(cfg: StudyConfig) -> bool:
    """Whether the teacher is ``teacher.weights`` used as they are (no training: ``finetune`` is off)."""
    return bool(cfg.teacher.arch and cfg.teacher.weights and not cfg.teacher.finetune)


def teacher_resources(cfg: StudyConfig) -> dict[str, float]:
    """The teacher task's resources: ``teacher.resources``, else a whole GPU when trials get GPUs, else every CPU of
    the largest node (the teacher trains alone, before any trial: nothing else needs the node)."""
    import ray

    if cfg.teacher.resources is not None:
        return {"cpu": cfg.teacher.resources.cpu, "gpu": cfg.teacher.resources.gpu}
    r = cfg.resources
    if r.device_share > 0:  # one process on one GPU (or the trials' whole number of them), also for parallel trials
        return {"cpu": r.cpu_per_worker if r.parallel else r.cpu, "gpu": max(1.0, float(int(r.gpu)))}
    cpus = [node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node.get("Alive")]
    return {"cpu": max(cpus, default=0.0) or cfg.resources.cpu, "gpu": 0.0}


def train_teacher_task(cfg: StudyConfig, data: dict[str, Any], out_dir: str) -> tuple[dict[str, Any], dict]:
    """Ray task: train a study's (or a campaign cell's) teacher once on the shared train split (plain cross-entropy,
    the teacher recipe; resumable in ``out_dir``, so a killed run goes on from the teacher's last epoch)."""
    import time

    from ...train.checkpoint import load_model
    from ...train.runner import fit, prepare_run
    from .shared import splits_from_shared, teacher_to_shared

    import_plugins(cfg.plugins)
    t0 = time.perf_counter()
    summary = fit(prepare_run(teacher_run_config(cfg, out_dir), splits=splits_from_shared(data)))
    model, meta = load_model(summary["weights_best"])
    return teacher_to_shared(model, meta, summary["weights_best"]), {**summary, "wall_s": time.perf_counter() - t0}


def start_training(cfg: StudyConfig, data_ref: Any, out_dir: str) -> Any:
    """Launch :func:`train_teacher_task` with the teacher's resources (:func:`teacher_resources`); returns its
    future (several teachers train at once when the cluster has room)."""
    import ray

    res = teacher_resources(cfg)
    task = ray.remote(train_teacher_task).options(num_cpus=res["cpu"], num_gpus=res["gpu"], max_retries=0)
    return task.remote(cfg, data_ref, out_dir)


def store_trained(cache: Any, key: Any, shared: dict[str, Any], summary: dict[str, Any], by: str) -> Any:
    """A teacher just trained, into the teacher cache (weights with their key in the header); returns the entry."""
    from ...train.checkpoint import save_model_weights
    from .shared import teacher_from_shared

    model, _ = teacher_from_shared(shared)
    with tempfile.TemporaryDirectory(prefix="cktf-teacher-") as tmp:
        local = Path(tmp) / TEACHER_FILE
        save_model_weights(local, model, {**shared["meta"], "teacher_key": key.digest})
        return cache.put(key, local, summary, by=by)


def from_cache(cache: Any, key: Any, scratch: Path) -> tuple[Any, dict[str, Any], Any] | None:
    """``(model, meta, entry)`` of a verified teacher-cache entry (trained before, by any study or campaign), or
    ``None`` when the cache has none (a corrupt or stale entry is none: it is trained again)."""
    from ...train.checkpoint import load_model

    entry = cache.lookup(key)
    if entry is None:
        return None
    model, meta = load_model(cache.local_weights(entry, scratch), "teacher")
    return model, meta, entry


def teacher_cache_key(cfg: StudyConfig, splits: Any) -> tuple[Any, Any]:
    """The teacher cache and the key of the study's trained teacher (docs/campaigns.md, "The teacher cache"), or
    ``(None, None)`` with ``teacher.cache: false``."""
    if not cfg.teacher.cache:
        return None, None
    from ...train.teacher_cache import TeacherCache, default_root, key_for_splits

    t = cfg.teacher
    return TeacherCache(default_root(cfg.workdir)), key_for_splits(t.arch, splits, t.optim, t.train, t.weights)


def obtain_teacher(
    plan: StudyPlan, store: StudyStore, data_ref: Any, progress: bool = True, notify: Any = None
) -> dict[str, Any] | None:
    """The shared teacher: the given checkpoint, the study's saved one, or trained now (once). ``notify``: called
    with a line for the terminal (the live view) when the teacher is loaded, and before and after it trains."""
    import time

    import ray

    from ...train.checkpoint import load_model, save_model_weights
    from .shared import splits_to_shared, teacher_from_shared, teacher_to_shared

    def say(line: str) -> None:
        if notify is not None:
            notify(f"  {line}")

    cfg = plan.study
    # what every trial's distiller says about the pair (the pairing), kept with the study's state: the MLflow
    # callback logs it on the parent run and each child run (results/lineage.py)
    write_state(store, run_params=dict(plan.run_params))
    if not cfg.needs_teacher:
        return None
    if cfg.teacher.checkpoint:
        model, meta = load_model(cfg.teacher.checkpoint, "teacher.checkpoint")
        say(f"teacher {meta.get('arch', '')}: loaded from {cfg.teacher.checkpoint}")
        return teacher_to_shared(model, meta, str(Path(cfg.teacher.checkpoint).resolve()))
    scratch = Path(tempfile.mkdtemp(prefix="cktf-teacher-"))
    if store.exists(TEACHER_FILE):
        local = store.local_path(TEACHER_FILE) or store.download(scratch / TEACHER_FILE, TEACHER_FILE)
        model, meta = load_model(local, "teacher")
        log.info("teacher: reusing %s", store.uri_of(TEACHER_FILE))
        say(f"teacher {cfg.teacher.arch}: reusing the study's, {'loaded' if as_is(cfg) else 'trained'} before")
        return teacher_to_shared(model, meta, store.uri_of(TEACHER_FILE))
    if as_is(cfg):  # library or local weights used as they are: nothing is trained
        from ...models.sources import pretrained_model
        from ..plan.validate import teacher_classes

        t = cfg.teacher
        model = pretrained_model(t.arch, t.weights, teacher_classes(cfg, plan.splits), t.download, "teacher.weights")
        data = t.data or cfg.data
        meta = {"arch": t.arch, "num_classes": model.num_classes, "weights": t.weights, "dataset": data.dataset}
        local = store.local_path(TEACHER_FILE) or scratch / TEACHER_FILE
        save_model_weights(local, model, meta)
        store.upload(local, TEACHER_FILE)
        write_state(store, teacher={"weights": t.weights, "trained": False})
        log.info("teacher: %s from %s, used as it is (not trained)", t.arch, t.weights)
        say(f"teacher {t.arch}: weights {t.weights}, used as they are (not trained)")
        return teacher_to_shared(model, meta, store.uri_of(TEACHER_FILE))
    splits = plan.splits
    if cfg.teacher.data is not None:  # the source domain (transfer): decoded here, shared with the task only
        from ...data import load_splits

        splits = load_splits(cfg.teacher.data, progress=progress)
    cache, key = teacher_cache_key(cfg, splits)
    found = from_cache(cache, key, scratch) if key is not None else None
    if found is not None:  # trained before, by this or another study or campaign: reused, not trained again
        model, meta, entry = found
        local = store.local_path(TEACHER_FILE) or scratch / TEACHER_FILE
        save_model_weights(local, model, meta)
        store.upload(local, TEACHER_FILE)
        accs = {k: entry.summary.get(k) for k in ("val_acc", "test_acc", "epochs")}
        write_state(store, teacher={**accs, "cache": key.digest, "trained": False})
        log.info(
            "teacher: %s from the teacher cache (%s in %s), not trained again", cfg.teacher.arch, key.short, cache.uri
        )
        say(f"teacher {cfg.teacher.arch}: from the teacher cache ({key.short}), trained before")
        return teacher_to_shared(model, meta, store.uri_of(TEACHER_FILE))
    res = teacher_resources(cfg)
    log.info(
        "teacher: training %s for %d epochs (once per study) on %s CPU(s) and %s GPU(s)",
        cfg.teacher.arch,
        cfg.teacher.train.epochs,
        res["cpu"],
        res["gpu"],
    )
    write_state(store, teacher_resources=res)
    start = f" from {cfg.teacher.weights}" if cfg.teacher.weights else ""
    say(f"teacher {cfg.teacher.arch}: training {cfg.teacher.train.epochs} epochs{start}, once for the study ...")
    t0 = time.perf_counter()
    if cfg.teacher.data is not None:
        data_ref = ray.put(splits_to_shared(splits))
    out_dir = store.local_path("teacher") or scratch / "teacher"
    shared, summary = ray.get(start_training(cfg, data_ref, str(out_dir)))
    model, _ = teacher_from_shared(shared)
    meta = {**shared["meta"], "teacher_summary": summary}
    local = store.local_path(TEACHER_FILE) or scratch / TEACHER_FILE
    save_model_weights(local, model, meta)
    store.upload(local, TEACHER_FILE)
    if key is not None:
        cache.put(key, local, summary, by=f"study {cfg.name}")
    facts = {k: summary.get(k) for k in ("val_acc", "test_acc", "epochs")}
    write_state(store, teacher={**facts, **({"cache": key.digest} if key is not None else {}), "trained": True})
    acc = summary.get("val_acc")
    score = f"val_acc {acc:.2f}" if isinstance(acc, int | float) else "trained"
    say(
        f"teacher {cfg.teacher.arch}: {score} after {summary.get('epochs', cfg.teacher.train.epochs)} epochs "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    return {**shared, "path": store.uri_of(TEACHER_FILE)}


# ----------------------------------------------------------------------------------- a campaign's teachers


def teacher_keys(plan: Any) -> dict[str, TeacherKey]:
    """The cache key of every pair's teacher that is trained (not given as a checkpoint); needs the splits."""
    from ...train.teacher_cache import data_digest, teacher_key

    out, digests = {}, {}
    for pair, need in plan.teachers.items():
        if need.checkpoint is None:
            t, splits = need.study.teacher, plan.splits[need.data]
            if need.data not in digests:  # pairs on the same data hash it once
                digests[need.data] = data_digest(splits)
            out[pair] = teacher_key(need.arch, digests[need.data], t.optim, t.train, dataset=splits.spec.name)
    return out


def obtain_teachers(plan: Any, store: StudyStore, data_refs: dict[str, Any], cache: TeacherCache) -> dict[str, Any]:
    """A campaign's teachers, one per pair, each obtained once: ``plan`` holds them by pair (``teachers``: its
    architecture, a checkpoint or the cell whose teacher section is the recipe, its data key) and the splits by data
    key. Teachers are addressed by their cache key (:mod:`cktf.train.teacher_cache`), so two pairs with the same
    teacher on the same data share one training; those still missing train at once, each as :func:`start_training`'s
    Ray task in a resumable folder of the campaign, then go into the cache. Returns ``{pair: object ref of the shared
    teacher}``; records in the campaign's state where each came from (``checkpoint``, ``cache`` or ``trained``) with
    its key and accuracies."""
    import ray

    from ...train.checkpoint import load_model
    from .shared import teacher_to_shared

    keys = teacher_keys(plan)
    refs: dict[str, Any] = {}
    facts: dict[str, dict[str, Any]] = {}
    by_key: dict[str, list[str]] = {}
    for pair, need in plan.teachers.items():
        if need.checkpoint is not None:
            model, meta = load_model(need.checkpoint, "teacher_checkpoint")
            refs[pair] = ray.put(teacher_to_shared(model, meta, str(Path(need.checkpoint).resolve())))
            facts[pair] = {"arch": need.arch, "source": "checkpoint", "path": str(need.checkpoint)}
            continue
        by_key.setdefault(keys[pair].digest, []).append(pair)
    pending = {}
    recorded = read_state(store).get("teachers") or {}
    for digest, pairs in by_key.items():
        key, need = keys[pairs[0]], plan.teachers[pairs[0]]
        key = pinned(key, (recorded.get(pairs[0]) or {}).get("key"), cache, pairs)
        digest = key.digest
        found = from_cache(cache, key, Path(tempfile.mkdtemp(prefix="cktf-teacher-")))
        if found is not None:
            model, meta, entry = found
            ref = ray.put(teacher_to_shared(model, meta, entry.uri))
            log.info("teacher %s for %s: reusing cache entry %s", need.arch, ", ".join(pairs), key.short)
            for p in pairs:
                refs[p] = ref
                facts[p] = {
                    "arch": need.arch,
                    "source": "cache",
                    "key": digest,
                    "path": entry.uri,
                    **_accs(entry.summary),
                }
            continue
        res = teacher_resources(need.study)
        out_dir = store.local_path("teachers", key.short) or Path(tempfile.mkdtemp(prefix="cktf-teacher-"))
        log.info(
            "teacher %s for %s: training it once (%d epochs) on %s CPU(s), %s GPU(s)",
            need.arch,
            ", ".join(pairs),
            need.study.teacher.train.epochs,
            res["cpu"],
            res["gpu"],
        )
        pending[digest] = (start_training(need.study, data_refs[need.data], str(out_dir)), key, pairs)
    for future, key, pairs in pending.values():  # trained at once, each as its own Ray task
        shared, summary = ray.get(future)
        entry = store_trained(cache, key, shared, summary, f"campaign {plan.campaign.name}")
        ref = ray.put({**shared, "path": entry.uri})
        for p in pairs:
            refs[p] = ref
            facts[p] = {
                "arch": key.spec["arch"],
                "source": "trained",
                "key": digest,
                "path": entry.uri,
                **_accs(summary),
            }
    write_state(store, teachers={**recorded, **facts})  # a resumed launch obtains only the teachers it still needs
    return refs


def pinned(key: TeacherKey, recorded: str | None, cache: TeacherCache, pairs: list[str]) -> TeacherKey:
    """The teacher a resumed campaign started with, when only the code version changed since (every run of a campaign
    has the same teacher); else ``key``. A changed architecture, data or recipe is a new teacher."""
    if not recorded or recorded == key.digest:
        return key
    old = cache.stored_key(recorded)
    if old is None or not same_but_code(old.spec, key.spec):
        return key
    log.warning(
        "teacher %s for %s: the code changed since the campaign started (%s, now %s); keeping the teacher its runs "
        "were trained with (%s)",
        key.spec.get("arch"),
        ", ".join(pairs),
        old.spec.get("code"),
        key.spec.get("code"),
        old.short,
    )
    return old


def _accs(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("val_acc", "test_acc", "test_acc_last", "test_acc_max_over_epochs", "epochs")
    return {k: summary.get(k) for k in keys if summary.get(k) is not None}
