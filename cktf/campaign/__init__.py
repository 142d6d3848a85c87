"""Campaigns: the paper's tables in one command (``cktf campaign FILE.yaml``; docs/campaigns.md).

A campaign is pairs x methods x seeds (plus ``tuned`` cells from finished studies), expanded into runs that the
engine runs as one grid stage of study trials (:mod:`cktf.tune.run`), each an MLflow child run tagged (pair, method,
seed) under the campaign's parent run; its teachers come from the content-addressed teacher cache
(:mod:`cktf.train.teacher_cache`), and its table gives per cell the mean ± std over seeds with the published number
beside it and per row a paired test against the best baseline. What only campaigns have lives here: :mod:`.schema`
(the file), :mod:`.plan` (expansion into cells and runs, checks), :mod:`.cost` (the dry run), :mod:`.run` (the grid
stage and the table at the end), :mod:`.table`, :mod:`.render` and :mod:`.reference`; only :mod:`.run` uses Ray. Its
teachers come from the teacher service (:func:`cktf.tune.run.teacher.obtain_teachers`), its command is ``cktf
campaign`` (:mod:`cktf.cli`).
"""

__all__ = ["CampaignConfig", "load_campaign"]


def __getattr__(name: str):
    """``CampaignConfig`` and ``load_campaign``, imported lazily: importing the package must not import Ray before
    the entry point has kept a local Ray on loopback (:func:`cktf.settings.keep_ray_local`)."""
    if name in __all__:
        from . import schema

        return getattr(schema, name)
    raise AttributeError(f"module 'cktf.campaign' has no attribute {name!r}")
