"""Campaigns: the paper's tables in one command (``cktf campaign FILE.yaml``; docs/campaigns.md).

A campaign is pairs x methods x seeds (plus ``tuned`` cells from finished studies), expanded into runs that Ray Tune
schedules as study trials, each an MLflow child run tagged (pair, method, seed) under the campaign's parent run; its
teachers come from the content-addressed teacher cache (:mod:`cktf.train.teacher_cache`), and its table gives per
cell the mean ± std over seeds with the published number beside it and per row a paired test against the best
baseline. Modules: :mod:`.schema` (the file), :mod:`.load`, :mod:`.plan` (expansion, checks), :mod:`.cost` (the dry
run), :mod:`.teachers`, :mod:`.trainable`, :mod:`.lineage` (index + MLflow), :mod:`.driver`, :mod:`.table`,
:mod:`.render`, :mod:`.cli`; of these only the driver, trainable and lineage modules use Ray themselves.
"""

from .load import load_campaign
from .schema import CampaignConfig

__all__ = ["CampaignConfig", "load_campaign"]
