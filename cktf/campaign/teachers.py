"""The campaign's teachers, one per pair, each obtained once through the teacher service
(:mod:`cktf.tune.run.teacher`): a pair's checkpoint, a verified teacher-cache entry, or trained now.

Teachers are addressed by their cache key (:mod:`cktf.train.teacher_cache`), so two pairs with the same teacher on
the same data (Table 1's ResNet-110 and WRN-40-2 rows) share one training. The teachers still missing are trained
at once, each as the service's Ray task with a study teacher's resources, in a resumable folder of the campaign (a
killed campaign goes on from the teacher's last epoch), then stored in the cache and shared with every run through
the object store (:mod:`cktf.tune.run.shared`).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from ..train.teacher_cache import TeacherCache, TeacherKey, same_but_code
from ..tune.results.reader import read_state, write_state
from ..tune.results.store import StudyStore
from .plan import CampaignPlan

log = logging.getLogger(__name__)


def teacher_keys(plan: CampaignPlan) -> dict[str, TeacherKey]:
    """The cache key of every pair's teacher that is trained (not given as a checkpoint); needs the splits."""
    from ..train.teacher_cache import data_digest, teacher_key

    out, digests = {}, {}
    for pair, need in plan.teachers.items():
        if need.checkpoint is None:
            t, splits = need.study.teacher, plan.splits[need.data]
            if need.data not in digests:  # pairs on the same data hash it once
                digests[need.data] = data_digest(splits)
            out[pair] = teacher_key(need.arch, digests[need.data], t.optim, t.train, dataset=splits.spec.name)
    return out


def obtain_teachers(
    plan: CampaignPlan, store: StudyStore, data_refs: dict[str, Any], cache: TeacherCache
) -> dict[str, Any]:
    """``{pair: object ref of the shared teacher}`` for every pair that needs one; records in the campaign's state
    where each came from (``checkpoint``, ``cache`` or ``trained``) with its key and accuracies."""
    import ray

    from ..train.checkpoint import load_model
    from ..tune.run.shared import teacher_to_shared
    from ..tune.run.teacher import from_cache, start_training, store_trained, teacher_resources

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


__all__ = ["obtain_teachers", "teacher_keys"]
