"""``cktf campaign FILE.yaml [--dry-run] [--resume]``: the command, as a sub-parser ``cktf.cli`` mounts in two lines
(``add_parser(sub)``); ``python -m cktf.campaign FILE`` runs it alone.

Exit codes (those of ``cktf tune``): 0 complete (every run ended; the table written), 2 a bad input (nothing ran),
3 incomplete (Ctrl-C, a killed driver: ``--resume`` continues it), 4 every run failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from ..config import parse_assignments
from ..errors import CKTFError
from ..registry import UnknownNameError
from ..settings import EXIT_ALL_FAILED, EXIT_COMPLETE, EXIT_INCOMPLETE, EXIT_USAGE, keep_ray_local, resume_command


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The ``campaign`` sub-command on ``subparsers`` (``argparse``'s ``add_subparsers()`` result)."""
    p = subparsers.add_parser(
        "campaign", help="run a campaign: pairs x methods x seeds, teachers trained once, the paper's table"
    )
    p.add_argument("campaign", help="campaign YAML, e.g. studies/campaigns/offline.yaml")
    p.add_argument(
        "--dry-run", action="store_true", help="print runs, images x epochs, FLOPs and GPU-hours; run nothing"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted campaign (nothing finished is redone)"
    )
    p.add_argument("--retry-failed", action="store_true", help="with --resume: run the failed runs again")
    p.add_argument("--data-root", default=None, help="override data.root (and every pair's data.root)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field (train.epochs=2, seeds=[0])")
    p.add_argument("--quiet", action="store_true", help="only the final lines")
    p.add_argument("--verbose", dest="ray_view", action="store_true", help="Ray's own output")
    p.add_argument("--break-lock", action="store_true", help="take over a campaign whose lock is stale")
    p.set_defaults(func=run)
    return p


def _overrides(args: argparse.Namespace, raw: dict[str, Any] | None = None) -> dict[str, Any]:
    out = parse_assignments(args.set or [])
    if args.data_root:
        out["data.root"] = args.data_root
        for j, pair in enumerate((raw or {}).get("pairs") or []):
            if isinstance(pair, dict) and isinstance(pair.get("data"), dict):
                out[f"pairs.{j}.data.root"] = args.data_root
    return out


def dry_run(args: argparse.Namespace) -> int:
    """Load, expand and cost the campaign; print it. Missing data or unfinished tuned studies are notes."""
    from ..train.teacher_cache import TeacherCache
    from ..tune.plan.load import read_yaml
    from .cost import estimate, format_cost
    from .plan import plan_campaign
    from .schema import load_campaign

    cfg = load_campaign(args.campaign, _overrides(args, read_yaml(args.campaign, "campaign")))
    plan = plan_campaign(cfg, progress=False, data="optional")
    print(format_cost(estimate(plan, TeacherCache(cfg.cache_root))))
    return EXIT_COMPLETE


def run(args: argparse.Namespace) -> int:
    """Run, resume or cost a campaign (see the module docstring for the exit codes)."""
    if args.dry_run:
        return dry_run(args)
    keep_ray_local()
    from ..api import run_campaign
    from ..tune.plan.load import read_yaml

    overrides = _overrides(args, read_yaml(args.campaign, "campaign"))
    resume = resume_command("campaign", args.campaign, args.set, args.data_root)
    view = "quiet" if args.quiet else "ray" if args.ray_view else "live"
    if view == "live":
        from ..tune.run.console import quiet_console

        quiet_console()
    try:
        outcome = run_campaign(
            args.campaign,
            overrides,
            resume=args.resume,
            retry_failed=args.retry_failed,
            view=view,
            break_lock=args.break_lock,
        ).outcome
    except KeyboardInterrupt:
        print(f"cktf: interrupted; continue the campaign with: {resume}", file=sys.stderr)
        return EXIT_INCOMPLETE
    counts = ", ".join(f"{k} {v}" for k, v in outcome.counts.items() if v)
    name = outcome.campaign_dir.rstrip("/").rsplit("/", 1)[-1]
    print(f"campaign {name}: {outcome.status} ({counts}; {outcome.ran} run here) in {outcome.wall_s:.0f}s")
    print(f"table: {outcome.table_dir}/table.md (and .csv, .tex, .html; logged to the MLflow parent run)")
    if not args.quiet and outcome.table_dir:
        from pathlib import Path

        md = Path(outcome.table_dir) / "table.md"
        if md.exists():
            print(md.read_text())
    if outcome.status == "failed":
        print(
            "cktf: every run failed, so the campaign has no table; see the runs' errors in its index", file=sys.stderr
        )
        return EXIT_ALL_FAILED
    if not outcome.complete:
        print(f"cktf: the campaign ended early; continue it with: {resume}", file=sys.stderr)
        return EXIT_INCOMPLETE
    return EXIT_COMPLETE


def build_parser() -> argparse.ArgumentParser:
    """A parser with the one ``campaign`` command (``python -m cktf.campaign``; ``cktf campaign`` once wired)."""
    parser = argparse.ArgumentParser(prog="cktf")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cktf.campaign FILE ...`` (the ``campaign`` word is optional)."""
    keep_ray_local()  # before anything imports Ray
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "campaign":
        argv = ["campaign", *argv]
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except (CKTFError, UnknownNameError) as exc:
        print(f"cktf: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


__all__ = ["add_parser", "build_parser", "main", "run"]
