"""The Python API: what ``cktf tune`` and ``cktf campaign`` do, as functions (docs/python-api.md).

``run_study(path_or_dict, overrides=..., resume=...)`` loads the study, takes its lease (one driver per study),
reuses the ``--set`` values it was started with on ``--resume`` (the one rule: docs/studies.md, "Resuming"), checks
it against its data, and runs it in a :class:`~cktf.tune.run.context.RunContext`; ``run_campaign`` does the same
for a campaign. Both keep a local Ray on loopback and run quietly unless told otherwise (``view="live"``: the
terminal's live view). The command line is a thin layer over these.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from .results import CampaignResults, StudyResults, open_campaign, open_study
from .settings import RunSettings, keep_ray_local


def _load(cls: type[RunSettings], source: str | os.PathLike | Mapping[str, Any], overrides: Mapping[str, Any]):
    from .tune.plan.load import config_from_dict, load_config

    if isinstance(source, Mapping):
        return config_from_dict(cls, dict(source), None, dict(overrides))
    return load_config(cls, Path(source), dict(overrides))


def _enter(cls: type[RunSettings], source: Any, options: Any, lock: Any = None):
    """Load the file, enter its run context (the lease first), and on ``--resume`` reload it with the ``--set``
    values it was started with, merged with the ones given now."""
    from .tune.plan.load import resume_overrides
    from .tune.run.context import RunContext

    cfg = _load(cls, source, options.overrides)
    ctx = RunContext(cfg, options, lock)
    ctx.__enter__()
    try:
        if options.resume:
            merged = resume_overrides(ctx.state.get("overrides"), options.overrides)
            if merged != dict(options.overrides):
                ctx.options = replace(options, overrides=merged)
                ctx.settings = _load(cls, source, merged)
    except BaseException as exc:
        ctx.__exit__(type(exc), exc, exc.__traceback__)
        raise
    return ctx


def run_study(
    study: str | os.PathLike | Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    resume: bool = False,
    **options: Any,
):
    """Run (or resume) a study file or dict; returns its :class:`~cktf.results.StudyResults` (``.status``: complete,
    incomplete or failed; ``.best``, ``.trials``, ``.report()``, ``.export(path)``).

    ``options``: the run's :class:`~cktf.tune.run.context.RunOptions` (``view``: ``quiet`` by default, ``live``,
    ``ray``; ``break_lock``)."""
    keep_ray_local()
    from .tune.plan import StudyConfig, plan_study
    from .tune.run.context import RunOptions
    from .tune.run.study import run_in

    opts = RunOptions(**{"view": "quiet", **options}, resume=resume, overrides=dict(overrides or {}))
    ctx = _enter(StudyConfig, study, opts)
    try:
        outcome = run_in(ctx, plan_study(ctx.settings, progress=opts.view != "quiet"))
    finally:
        ctx.__exit__(None, None, None)
    return StudyResults(outcome.study_dir, outcome)


def run_campaign(
    campaign: str | os.PathLike | Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    resume: bool = False,
    **options: Any,
):
    """Run (or resume) a campaign file or dict; returns its :class:`~cktf.results.CampaignResults`.

    ``options``: as :func:`run_study`'s, and ``retry_failed`` (with ``resume``: run the failed runs again)."""
    keep_ray_local()
    from .campaign.plan import plan_campaign
    from .campaign.run import run_in
    from .campaign.schema import CampaignConfig
    from .errors import ConfigError
    from .tune.run.context import RunOptions

    opts = RunOptions(**{"view": "quiet", **options}, resume=resume, overrides=dict(overrides or {}))
    if opts.retry_failed and not resume:
        raise ConfigError("--retry-failed", "only continues a campaign", "pass --resume --retry-failed")
    ctx = _enter(CampaignConfig, campaign, opts)
    try:
        outcome = run_in(ctx, plan_campaign(ctx.settings, progress=opts.view != "quiet"))
    finally:
        ctx.__exit__(None, None, None)
    return CampaignResults(outcome.campaign_dir, outcome)


__all__ = ["CampaignResults", "StudyResults", "open_campaign", "open_study", "run_campaign", "run_study"]
