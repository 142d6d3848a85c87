"""Campaigns: the paper's tables in one command (``cktf campaign FILE.yaml``; docs/campaigns.md).

A campaign is pairs x methods x seeds (plus ``tuned`` cells from finished studies), expanded into runs that Ray Tune
schedules as study trials, each an MLflow child run tagged (pair, method, seed) under the campaign's parent run; its
teachers come from the content-addressed teacher cache (:mod:`cktf.train.teacher_cache`), and its table gives per
cell the mean ± std over seeds with the published number beside it and per row a paired test against the best
baseline. Modules: :mod:`.schema` (the file), :mod:`.load`, :mod:`.plan` (expansion, checks), :mod:`.cost` (the dry
run), :mod:`.teachers`, :mod:`.trainable`, :mod:`.lineage` (index + MLflow), :mod:`.driver`, :mod:`.table`,
:mod:`.render`, :mod:`.cli`; of these only the driver, trainable and lineage modules use Ray themselves.
"""

__all__ = ["CampaignConfig", "load_campaign"]


def __getattr__(name: str):
    """``CampaignConfig`` and ``load_campaign``, imported lazily: importing the package (``python -m cktf.campaign``)
    must not import Ray before the entry point has kept a local Ray on loopback (:func:`cktf.cli.keep_ray_local`)."""
    if name == "load_campaign":
        from .load import load_campaign

        return load_campaign
    if name == "CampaignConfig":
        from .schema import CampaignConfig

        return CampaignConfig
    raise AttributeError(f"module 'cktf.campaign' has no attribute {name!r}")
