"""The field reference of a campaign file, generated from the schema by the study's generator
(:mod:`cktf.tune.plan.reference`): ``docs/campaigns.md`` embeds it between two markers and a test keeps it current
(``python -m cktf.campaign.reference`` rewrites it)."""

from __future__ import annotations

from ..tune.plan.reference import reference_markdown, update_between
from .schema import CampaignConfig, CompareSpec, MethodSpec, PairSpec, TunedSpec

BEGIN, END = "<!-- campaign-fields:begin (cktf.campaign.reference) -->", "<!-- campaign-fields:end -->"
#: list fields whose entries are sections of their own, documented under ``<field>.<i>.``
LISTS = (("pairs", PairSpec), ("methods", MethodSpec), ("tuned", TunedSpec), ("table.compare", CompareSpec))


def campaign_markdown() -> str:
    return reference_markdown(CampaignConfig, (BEGIN, END), LISTS)


def update_docs(path: str = "docs/campaigns.md") -> bool:
    return update_between(path, (BEGIN, END), campaign_markdown())


if __name__ == "__main__":
    print("docs/campaigns.md updated" if update_docs() else "docs/campaigns.md is current")
