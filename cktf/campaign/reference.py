"""The field reference of a campaign file, generated from the schema (the study's generator,
:func:`cktf.tune.plan.reference.field_rows`): ``docs/campaigns.md`` embeds it between two markers and a test keeps it
current."""

from __future__ import annotations

from ..tune.plan.reference import field_rows
from .schema import CampaignConfig, CompareSpec, MethodSpec, PairSpec, TunedSpec

BEGIN, END = "<!-- campaign-fields:begin (cktf.campaign.reference) -->", "<!-- campaign-fields:end -->"
#: list fields whose entries are sections of their own, documented under ``<field>.<i>.``
LISTS = (("pairs", PairSpec), ("methods", MethodSpec), ("tuned", TunedSpec), ("table.compare", CompareSpec))


def campaign_markdown() -> str:
    """One row per field (dotted paths as ``--set`` takes them; ``<i>`` indexes a list)."""
    seen: dict[type, str] = {}
    rows = field_rows(CampaignConfig, "", seen)
    for name, model in LISTS:
        at = next(i for i, r in enumerate(rows) if r[0] == name) + 1
        rows[at:at] = field_rows(model, f"{name}.<i>.", seen)
    lines = [BEGIN, "", "| field | type | default | what it is |", "|---|---|---|---|"]
    for path, type_text, default, text in rows:
        text = " ".join(text.split()).replace("|", "\\|")
        lines.append(f"| `{path}` | {type_text} | {default} | {text} |")
    lines += ["", END]
    return "\n".join(lines) + "\n"


__all__ = ["BEGIN", "END", "campaign_markdown", "update_docs"]


def update_docs(path: str = "docs/campaigns.md") -> bool:
    """Rewrite the table between the markers of ``path``; True when it changed (``python -m
    cktf.campaign.reference``)."""
    from pathlib import Path

    p = Path(path)
    text = p.read_text()
    a, b = text.index(BEGIN), text.index(END) + len(END)
    new = text[:a] + campaign_markdown().rstrip("\n") + text[b:]
    if new != text:
        p.write_text(new)
    return new != text


if __name__ == "__main__":
    print("docs/campaigns.md updated" if update_docs() else "docs/campaigns.md is current")
