"""The ``cktf`` command line, a thin layer over the Python API (:mod:`cktf.api`), the registries and the trainer.

Every user error (unknown name, missing data, bad value) is printed as one line naming the field and the fix (and
what was probably meant), and exits with code 2 before any training starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from .config import parse_assignments
from .errors import CKTFError, ConfigError
from .registry import UnknownNameError
from .settings import EXIT_ALL_FAILED, EXIT_COMPLETE, EXIT_INCOMPLETE, EXIT_USAGE, keep_ray_local, resume_command

# ----------------------------------------------------------------------------- config <-> argparse


def _add_config_args(parser: argparse.ArgumentParser, cls: type, prefix: str, skip: Sequence[str] = ()) -> None:
    """One ``--flag`` per config field (``data.root`` -> ``--data-root``), defaults and help from the model."""
    group = parser.add_argument_group(cls.__name__)
    for name, field in cls.model_fields.items():
        if name in skip:
            continue
        flag = "--" + (prefix + name).replace("_", "-")
        default = field.get_default(call_default_factory=True)
        dest = f"{cls.__name__}.{name}"
        help_ = f"{field.description or ''} (default: {default})".strip().replace("%", "%%")  # argparse formats it
        kind = str(field.annotation)
        if isinstance(default, bool) or kind in ("bool", "<class 'bool'>"):
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif isinstance(default, tuple):
            group.add_argument(flag, dest=dest, type=int, nargs="*", default=None, help=help_)
        else:
            group.add_argument(flag, dest=dest, default=None, help=help_)  # strings: the model converts and checks


def _config_from_args(cls: type, args: argparse.Namespace, where: str, **fixed: Any) -> Any:
    values = {name: getattr(args, f"{cls.__name__}.{name}", None) for name in cls.model_fields}
    values = {k: v for k, v in values.items() if v is not None}
    values.update({k: v for k, v in fixed.items() if v is not None})
    return cls.parse(values, where)


# ----------------------------------------------------------------------------- commands


def cmd_models(args: argparse.Namespace) -> int:
    from .models import MODELS, create_model

    if args.source:  # a library's models (nothing is built), or how to name your own
        from .models.sources import describe_source_models

        rows = describe_source_models(args.source, args.filter)
        if rows:
            print(f"{'model':<44} family")
        for name, family in rows:
            print(f"{name:<44} {family}")
        if args.source == "module":
            print("module: any importable factory, as module:pkg.mod:factory (docs/models.md)")
        return 0
    print(f"{'model':<12} {'family':<15} {'inputs':<8} {'params(M)':>9} {'modules':>7} {'features':>8}")
    for name in MODELS.names(args.filter):
        m = create_model(name, num_classes=100)
        n = sum(p.numel() for p in m.parameters()) / 1e6
        sizes = "/".join(map(str, m.input_sizes))
        family = MODELS.meta(name).get("family", "")
        print(f"{name:<12} {family:<15} {sizes:<8} {n:>9.2f} {len(m.feature_info):>7} {m.num_features:>8}")
    return 0


def cmd_import_weights(args: argparse.Namespace) -> int:
    """A library's or a local file's weights as a cktf checkpoint (a study's ``teacher.checkpoint``)."""
    from .models.sources import pretrained_model
    from .train.checkpoint import save_model_weights

    model = pretrained_model(args.model, args.weights, args.num_classes, download=args.download, field="--weights")
    meta = {"arch": args.model, "num_classes": model.num_classes, "weights": args.weights}
    save_model_weights(args.out, model, meta)
    print(f"wrote {args.out} ({args.model}, {model.num_classes} classes, weights {args.weights})")
    return 0


def cmd_distillers(args: argparse.Namespace) -> int:
    import fnmatch

    from .distillers import LOSS_TERMS, objective, objective_names

    print(f"{'distiller':<14} {'teacher':<7} {'negatives':<9} summary")
    for name in (n for n in objective_names() if fnmatch.fnmatch(n, args.filter)):
        obj = objective(name)
        teacher = "yes" if obj.needs_teacher else "no"
        negatives = "yes" if obj.parse({}).negatives() is not None else "-"
        if obj.secondary is None:
            summary = LOSS_TERMS.meta(obj.primary_name).get("summary", "")
            summary += f" (preset of {obj.primary_name})" if name != obj.primary_name else ""
        else:
            second = obj.secondary_name
            summary = f"Eq. 1: gamma*CE + {obj.primary_name} + theta*{second} (fields: {second}.<field>, theta)"
        print(f"{name:<14} {teacher:<7} {negatives:<9} {summary}")
        if args.fields and obj.secondary is None:
            for field, value in obj.fields().items():  # a preset's own values (cktf-paper: alpha1 0.8, alpha2 0.2)
                print(f"{'':<16}{field} = {value}")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from .data import prepare

    sizes = prepare(args.dataset, args.root, download=args.download, cache_dir=args.cache_dir)
    for split, n in sizes.items():
        print(f"{args.dataset} {split}: {n} images")
    return 0


def _run_config(args: argparse.Namespace, distiller: str, params: dict[str, Any], teacher: str | None):
    from .data import DataConfig
    from .train import OptimConfig, RunConfig, TrainConfig

    data = _config_from_args(DataConfig, args, "data", dataset=args.dataset)
    optim = _config_from_args(OptimConfig, args, "optim")
    train = _config_from_args(TrainConfig, args, "train", allow_long=args.i_mean_it or None)
    out_dir = args.out_dir or str(Path("runs") / f"{data.dataset}-{args.model}-{distiller}")
    return RunConfig(
        student=args.model,
        student_weights=args.student_weights,
        download=args.download,
        distiller=distiller,
        distill_params=params,
        teacher_checkpoint=teacher,
        data=data,
        optim=optim,
        train=train,
        out_dir=out_dir,
        resume=args.resume,
    )


def _train(cfg, args: argparse.Namespace) -> int:
    from .train import MLflowCallback, train
    from .train.runner import validate_names

    validate_names(cfg)  # fail fast, before MLflow or data are touched
    callbacks = []
    if args.mlflow_uri:
        callbacks.append(MLflowCallback(cfg.out_dir, tracking_uri=args.mlflow_uri, experiment=args.experiment))
    summary = train(cfg, callbacks)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_train_teacher(args: argparse.Namespace) -> int:
    return _train(_run_config(args, "ce", parse_assignments(args.set), None), args)


def cmd_distill(args: argparse.Namespace) -> int:
    return _train(_run_config(args, args.distiller, parse_assignments(args.set), args.teacher_ckpt), args)


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Offline demo on embedded defaults: a small teacher, then a KD student, logged to MLflow (sqlite)."""
    from .data import DataConfig
    from .train import MLflowCallback, OptimConfig, RunConfig, TrainConfig, train

    root = args.data_root
    out = Path(args.out_dir)
    data = DataConfig(dataset="cifar10", root=root, train_subset=args.train_subset, test_subset=args.test_subset)
    optim = OptimConfig(lr=0.05, milestones=(args.epochs * 2 // 3,))
    tcfg = TrainConfig(epochs=args.epochs, batch_size=64, progress=not args.quiet)
    teacher = RunConfig(
        student="resnet20", distiller="ce", data=data, optim=optim, train=tcfg, out_dir=str(out / "teacher")
    )
    from .train.runner import validate_names

    validate_names(teacher)
    t_sum = train(teacher, [MLflowCallback(teacher.out_dir, args.mlflow_uri, "cktf-quickstart")])
    student = teacher.replace(
        student="resnet8",
        distiller="kd",
        teacher_checkpoint=t_sum["weights_best"],
        out_dir=str(out / "student-kd"),
    )
    s_sum = train(student, [MLflowCallback(student.out_dir, args.mlflow_uri, "cktf-quickstart")])
    print(f"teacher resnet20: val {t_sum.get('val_acc', float('nan')):.2f}%  test {t_sum['test_acc']:.2f}%")
    print(f"student resnet8 (KD): val {s_sum.get('val_acc', float('nan')):.2f}%  test {s_sum['test_acc']:.2f}%")
    print(f"runs in {out}/ ; MLflow: mlflow ui --backend-store-uri {args.mlflow_uri}")
    return 0


# ----------------------------------------------------------------------------- studies


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = parse_assignments(getattr(args, "set", None) or [])
    if getattr(args, "data_root", None):
        out["data.root"] = args.data_root
    if getattr(args, "i_mean_it", False):
        out.update({"train.allow_long": True, "teacher.train.allow_long": True, "search.allow_large": True})
    return out


def cmd_tune(args: argparse.Namespace) -> int:
    """Run or resume a study; exit 0 when complete, 3 when it ended early (resumable), 4 when every trial failed."""
    from .api import run_study

    overrides = _overrides(args)
    if args.dry_run:  # checked against the data and described; nothing runs
        from .tune.plan import load_study
        from .tune.plan.dry_run import describe, dry_plan

        print(describe(dry_plan(load_study(args.study, overrides))))
        return EXIT_COMPLETE
    resume = resume_command("tune", args.study, args.set, args.data_root)
    run = partial(run_study, args.study, overrides, resume=args.resume, break_lock=args.break_lock)
    outcome = _run_with_view(args, run, resume, "study")
    if outcome is None:
        return EXIT_INCOMPLETE
    counts = ", ".join(f"{k} {v}" for k, v in outcome.counts.items() if v)
    name = outcome.study_dir.rstrip("/").rsplit("/", 1)[-1]
    print(
        f"study {name}: {outcome.status.upper() if not outcome.complete else 'complete'} ({counts}) "
        f"in {outcome.wall_s:.0f}s"
    )
    if outcome.headline:
        print(outcome.headline)
    elif outcome.best:
        b = outcome.best
        print(f"best: {b.describe()} (trial {b.trial.trial_id}), score {b.score:.2f}")
    if outcome.model_uri:
        print(f"registered: {outcome.model_uri}  (mlflow.pytorch.load_model, or cktf export {outcome.model_uri})")
    print(f"study dir: {outcome.study_dir}  (cktf report / cktf export {outcome.study_dir} --out student.safetensors)")
    if outcome.status == "failed":
        from .tune.results.reader import StudyResults

        trials = StudyResults(outcome.study_dir).trials()
        first = next((t.record.get("error") for t in trials if t.record.get("error")), "")
        reason = (first or "").strip().splitlines()[-1:] or ["see the trials' errors in the trial index"]
        print(f"cktf: every trial failed, so the study has no result; the first error: {reason[0]}", file=sys.stderr)
    return _exit_code(outcome, resume, "study")


def _add_engine_args(p: argparse.ArgumentParser, what: str, dry_run: str) -> None:
    """The flags ``cktf tune`` and ``cktf campaign`` share (one engine runs both)."""
    p.add_argument("--resume", action="store_true", help=f"continue an interrupted {what} (nothing ended is redone)")
    p.add_argument("--data-root", default=None, help="override data.root (a campaign's pairs' too)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field (search.num_samples=4)")
    p.add_argument("--quiet", action="store_true", help="only the final lines (no live view)")
    p.add_argument("--verbose", dest="ray_view", action="store_true", help="Ray's own output instead of the live view")
    p.add_argument("--break-lock", action="store_true", help=f"take over a {what} whose lock is stale")
    p.add_argument("--dry-run", action="store_true", help=dry_run)


def _run_with_view(args: argparse.Namespace, run: Any, resume: str, what: str) -> Any:
    """``run(view=...)``'s outcome with the view the flags ask for (``--quiet``, ``--verbose``: Ray's, else the live
    view with cktf's own warnings only on the terminal); None after Ctrl-C, said with the command that continues."""
    view = "quiet" if args.quiet else "ray" if args.ray_view else "live"
    if view == "live":
        from .tune.run.console import quiet_console

        quiet_console()
    try:
        return run(view=view).outcome
    except KeyboardInterrupt:
        print(f"cktf: interrupted; continue the {what} with: {resume}", file=sys.stderr)
        return None


def _exit_code(outcome: Any, resume: str, what: str) -> int:
    """The exit code of a study or a campaign that ran: 4 every trial failed, 3 ended early (resumable), else 0."""
    if outcome.status == "failed":
        return EXIT_ALL_FAILED
    if not outcome.complete:
        print(f"cktf: the {what} ended early; continue it with: {resume}", file=sys.stderr)
        return EXIT_INCOMPLETE
    return EXIT_COMPLETE


# ----------------------------------------------------------------------------- campaigns


def _campaign_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``--set`` values and ``--data-root`` (which sets every pair's own data root too)."""
    from .tune.plan.load import read_yaml

    out = parse_assignments(args.set or [])
    if args.data_root:
        out["data.root"] = args.data_root
        for j, pair in enumerate(read_yaml(args.campaign, "campaign").get("pairs") or []):
            if isinstance(pair, dict) and isinstance(pair.get("data"), dict):
                out[f"pairs.{j}.data.root"] = args.data_root
    return out


def cmd_campaign(args: argparse.Namespace) -> int:
    """Run, resume or cost a campaign (docs/campaigns.md); exit codes as ``cktf tune``'s."""
    overrides = _campaign_overrides(args)
    if args.dry_run:  # runs, images x epochs, FLOPs, GPU-hours; missing data or unfinished tuned studies are notes
        from .campaign.cost import estimate, format_cost
        from .campaign.plan import plan_campaign
        from .campaign.schema import load_campaign
        from .train.teacher_cache import TeacherCache

        cfg = load_campaign(args.campaign, overrides)
        plan = plan_campaign(cfg, progress=False, data="optional")
        print(format_cost(estimate(plan, TeacherCache(cfg.cache_root))))
        return EXIT_COMPLETE
    from .api import run_campaign

    resume = resume_command("campaign", args.campaign, args.set, args.data_root)
    run = partial(
        run_campaign, args.campaign, overrides, resume=args.resume, retry_failed=args.retry_failed,
        break_lock=args.break_lock,
    )  # fmt: skip
    outcome = _run_with_view(args, run, resume, "campaign")
    if outcome is None:
        return EXIT_INCOMPLETE
    counts = ", ".join(f"{k} {v}" for k, v in outcome.counts.items() if v)
    name = outcome.campaign_dir.rstrip("/").rsplit("/", 1)[-1]
    print(f"campaign {name}: {outcome.status} ({counts}; {outcome.ran} run here) in {outcome.wall_s:.0f}s")
    print(f"table: {outcome.table_dir}/table.md (and .csv, .tex, .html; logged to the MLflow parent run)")
    md = Path(outcome.table_dir or ".") / "table.md"
    if not args.quiet and outcome.table_dir and md.exists():
        print(md.read_text())
    if outcome.status == "failed":
        failed = "cktf: every run failed, so the campaign has no table; see the runs' errors in its index"
        print(failed, file=sys.stderr)
    return _exit_code(outcome, resume, "campaign")


def cmd_export(args: argparse.Namespace) -> int:
    from .tune.results.export import export_best, export_onnx

    if args.study.startswith("models:/"):  # a registered student (e.g. models:/quickstart@champion)
        from .tune.results.champion import export_registered

        info = export_registered(args.study, args.out, args.tracking_uri)
        if args.onnx:
            export_onnx(Path(args.out), Path(args.out).with_suffix(".onnx"))
        print(
            f"wrote {args.out} (+ {Path(args.out).with_suffix('.json').name}): {info['architecture']} from "
            f"{args.study} (version {info['model_version']}, trial {info.get('trial')})"
        )
        return 0
    info = export_best(args.study, args.out, onnx=args.onnx)
    score, t = info["score"], info["test_metric"]
    test = f", {t['name']} {t['value']:.2f}" if t["value"] is not None else ""
    seeds = f" ± {score['std']:.2f} over {score['seeds']} seeds" if score.get("confirmed") else ""
    print(
        f"wrote {args.out} (+ {Path(args.out).with_suffix('.json').name}): {info['architecture']}, {info['best']} "
        f"(trial {info['trial']}), score {score['value']:.2f}{seeds}{test}; study {info['study_status']}"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .tune.results.report import write_report

    out = write_report(args.study, top_k=args.top_k)
    print((out / "summary.md").read_text())
    print(f"report written to {out}/")
    return 0


def cmd_mlflow_sync(args: argparse.Namespace) -> int:
    """Replay into MLflow what a study's trial index holds and MLflow missed (a server that was down)."""
    from .tune.plan import load_study
    from .tune.results.mlflow_runs import sync_parent, sync_study
    from .tune.results.reader import StudyResults, resolve_study_dir
    from .tune.results.tracking import Tracking

    uri = args.tracking_uri
    if uri is None and str(args.study).endswith((".yaml", ".yml")):
        uri = load_study(args.study).mlflow.tracking_uri
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    results = StudyResults(resolve_study_dir(args.study))
    state = results.state
    if not state.get("parent_run_id"):
        raise ConfigError("study", f"{results.study_dir} has no MLflow parent run recorded", "run the study first")
    tracking = Tracking(uri, args.retry_s)
    done = sync_study(tracking, results.store, state.get("experiment_id"), state["parent_run_id"])
    sync_parent(tracking, results, state["parent_run_id"])
    if not tracking.up:
        print(f"cktf: error: the tracking server at {uri} does not answer; nothing more was sent", file=sys.stderr)
        return EXIT_INCOMPLETE
    print(f"MLflow at {uri} holds study {results.name} now: {done}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of a study file (editors: ``# yaml-language-server: $schema=...``)."""
    if args.markdown:
        from .tune.plan.reference import schema_markdown

        print(schema_markdown(), end="")
        return 0
    from .tune.plan import study_json_schema

    print(json.dumps(study_json_schema(), indent=2))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """Open the MLflow UI on the study store, bound to localhost (port-forward to reach it remotely). SIGINT and
    SIGTERM are passed on to the server, which is waited for, so it never outlives this command."""
    import signal
    import subprocess

    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", args.tracking_uri]
    cmd += ["--host", args.host, "--port", str(args.port)]
    print("running:", " ".join(cmd))
    if args.study:
        from .tune.results.links import study_links
        from .tune.results.ui import publish_to_store

        # the study's saved views (columns, order, charts) into the store the UI serves; --dry-run writes nothing
        if not args.dry_run and not publish_to_store(args.tracking_uri, args.study, args.top):
            print("note: the study's views could not be stored in this tracking store; the links open what it holds")
        for label, url in study_links(args.study, f"http://{args.host}:{args.port}", args.top):
            print(f"{label}: {url}")
    if args.dry_run:
        return 0
    server = subprocess.Popen(cmd)

    def forward(signum, frame):
        if server.poll() is None:
            server.send_signal(signal.SIGTERM if signum == signal.SIGTERM else signal.SIGINT)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                return server.wait()
            except KeyboardInterrupt:  # a second Ctrl-C before the server stopped: keep waiting for it
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_probe(args: argparse.Namespace) -> int:
    """Linear probe of a trained/distilled model on a labeled dataset (Section 3.2, step 2)."""
    from .data import DataConfig, load_splits
    from .train.checkpoint import load_model
    from .train.runner import resolve_device
    from .transfer import ProbeConfig, linear_probe

    data = _config_from_args(DataConfig, args, "data", dataset=args.dataset)
    cfg = _config_from_args(ProbeConfig, args, "probe")
    model, meta = load_model(args.weights, "--weights")
    splits = load_splits(data, progress=not args.quiet)
    device = resolve_device(args.device)

    def show(epoch: int, row: dict[str, float]) -> None:
        if not args.quiet:
            accs = "  ".join(f"{k[6:]} {v:.2f}" for k, v in row.items() if k.endswith("_acc"))
            print(f"probe epoch {epoch + 1}/{cfg.epochs}: loss {row['probe_loss']:.4f}  {accs}")

    _, summary = linear_probe(model, splits, cfg, device, on_epoch=show)
    print(
        f"probe of {meta['arch']} on {data.dataset}: test {summary['test_acc']:.2f}% at the best "
        f"{'val' if summary['val_acc'] is not None else 'test'} epoch {summary['best_epoch']}"
        f" (max over epochs {summary['test_acc_max_over_epochs']:.2f}%)"
    )
    if args.out:
        Path(args.out).write_text(json.dumps({"weights": args.weights, **summary}, indent=1))
    return 0


# ----------------------------------------------------------------------------- parser


def _add_run_args(p: argparse.ArgumentParser) -> None:
    from .data import DataConfig
    from .train import OptimConfig, TrainConfig

    p.add_argument("--model", required=True, help="architecture: a zoo name, tv:NAME, timm:NAME or module:pkg.mod:f")
    p.add_argument(
        "--student-weights",
        default=None,
        metavar="PATH|TAG",
        help="initial weights of --model: a .safetensors/.pth file or the library's tag (DEFAULT, IMAGENET1K_V2)",
    )
    p.add_argument("--download", action="store_true", help="fetch library weights the cache lacks (needs internet)")
    p.add_argument("--dataset", default="cifar100", help="dataset name (default: cifar100)")
    p.add_argument("--out-dir", default=None, help="run directory (default: runs/<dataset>-<model>-<distiller>)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True, help="resume from out-dir")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a distiller field, repeatable")
    p.add_argument(
        "--mlflow-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", ""),
        help="log to MLflow (e.g. sqlite:///mlflow.db)",
    )
    p.add_argument("--experiment", default="cktf", help="MLflow experiment name")
    p.add_argument("--i-mean-it", action="store_true", help="accept more than train.MAX_EPOCHS epochs")
    _add_config_args(p, DataConfig, "data-", skip=("dataset",))
    _add_config_args(p, OptimConfig, "")
    _add_config_args(p, TrainConfig, "", skip=("allow_long",))


def build_parser() -> argparse.ArgumentParser:
    from .data import DataConfig
    from .transfer import ProbeConfig

    parser = argparse.ArgumentParser(
        prog="cktf",
        description="Knowledge distillation (CKTF and the methods it is compared with) tuned at scale: studies with "
        "Ray Tune, Optuna and MLflow, campaigns that reproduce the paper's tables, single runs.",
        epilog="Start with: cktf tune studies/quickstart.yaml --data-root DATA (docs/studies.md); cktf COMMAND --help "
        "for a command's options.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"cktf {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the model zoo, or a library's models (--source tv|timm)")
    p.add_argument("--filter", default="*", help="glob on names, e.g. 'resnet*'")
    p.add_argument(
        "--source",
        choices=("tv", "timm", "module"),
        default=None,
        help="list torchvision (tv) or timm models instead of the zoo, or how to name your own (docs/models.md)",
    )
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("import-weights", help="a library's or a local file's weights as a cktf checkpoint (a teacher)")
    p.add_argument("model", help="tv:NAME, timm:NAME, module:pkg.mod:factory or a zoo name")
    p.add_argument(
        "--weights", required=True, help="a .safetensors/.pth file, or the library's tag (DEFAULT, IMAGENET1K_V2, ...)"
    )
    p.add_argument(
        "--num-classes", type=int, default=None, help="the classifier's class count (default: the weights' own)"
    )
    p.add_argument("--download", action="store_true", help="fetch library weights the cache lacks (needs internet)")
    p.add_argument("--out", required=True, help="the .safetensors to write (a study's teacher.checkpoint)")
    p.set_defaults(func=cmd_import_weights)

    p = sub.add_parser("distillers", help="list distillation methods")
    p.add_argument("--filter", default="*")
    p.add_argument("--fields", action="store_true", help="show each method's config fields and defaults")
    p.set_defaults(func=cmd_distillers)

    data = sub.add_parser("data", help="dataset utilities").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("prepare", help="decode a dataset once into the on-disk cache (downloads with --download)")
    p.add_argument("dataset")
    p.add_argument("--root", required=True, help="data root")
    p.add_argument("--download", action="store_true", help="download when missing (needs internet)")
    p.add_argument("--cache-dir", default=None, help="decoded-array cache (default: $CKTF_CACHE_DIR or ~/.cache/cktf)")
    p.set_defaults(func=cmd_data_prepare)

    p = sub.add_parser("train-teacher", help="train a model with cross-entropy (a teacher or a baseline student)")
    _add_run_args(p)
    p.set_defaults(func=cmd_train_teacher)

    p = sub.add_parser("distill", help="distil a student from a trained teacher")
    _add_run_args(p)
    p.add_argument("--teacher-ckpt", required=True, help="teacher weights (.safetensors written by cktf)")
    p.add_argument("--distiller", default="kd", help="method (see `cktf distillers`)")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("tune", help="run a hyper-parameter study (Ray Tune + ASHA + Optuna, logged to MLflow)")
    p.add_argument("study", help="study YAML, e.g. studies/quickstart.yaml")
    _add_engine_args(p, "study", "check the study against its data, print its plan and cost; run nothing")
    p.add_argument("--i-mean-it", action="store_true", help="accept more than 2400 epochs or 1000 trials")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("campaign", help="run a campaign: pairs x methods x seeds, teachers trained once, the table")
    p.add_argument("campaign", help="campaign YAML, e.g. studies/campaigns/offline.yaml")
    _add_engine_args(p, "campaign", "print runs, images x epochs, FLOPs and GPU-hours; run nothing")
    p.add_argument("--retry-failed", action="store_true", help="with --resume: run the failed runs again")
    p.set_defaults(func=cmd_campaign)

    p = sub.add_parser("mlflow-sync", help="send MLflow what a study's trial index holds and MLflow missed")
    p.add_argument("study", help="study directory (local or s3://), study YAML or study name")
    p.add_argument("--tracking-uri", default=None, help="default: the study file's, else $MLFLOW_TRACKING_URI")
    p.add_argument("--retry-s", type=float, default=30.0, help="how long each call retries")
    p.set_defaults(func=cmd_mlflow_sync)

    p = sub.add_parser("schema", help="print the JSON Schema of a study file (cktf schema > study.schema.json)")
    p.add_argument("--markdown", action="store_true", help="the field reference table of docs/studies.md instead")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("export", help="write the best finished trial's student (.safetensors + .json)")
    p.add_argument("study", help="study directory, YAML or name, or a registered model (models:/NAME@champion)")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
        help="the registry of a models:/ URI",
    )
    p.add_argument("--onnx", action="store_true", help="also write an ONNX graph next to it")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="summarise a study: best vs baseline, top-k, anchors, plots")
    p.add_argument("study", help="study directory, study YAML or study name")
    p.add_argument("--top-k", type=int, default=10)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("ui", help="open the MLflow UI on a tracking store (localhost only)")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--dry-run", action="store_true", help="print the command only")
    p.add_argument(
        "--study",
        default=None,
        help="store this study's views in the tracking store and print their links (its trials by score, score vs "
        "the searched values, the top trials, the parent run, the registered model)",
    )
    p.add_argument("--top", type=int, default=5, help="best trials in the compare link, with the defaults (default 5)")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("probe", help="linear probe of a model's frozen features on a labeled dataset")
    p.add_argument("--weights", required=True, help="a cktf .safetensors (e.g. a distilled student)")
    p.add_argument("--dataset", default="stl10", help="labeled target dataset (default: stl10)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="write the per-epoch curve and summary as JSON")
    p.add_argument("--quiet", action="store_true")
    _add_config_args(p, DataConfig, "data-", skip=("dataset",))
    _add_config_args(p, ProbeConfig, "")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("quickstart", help="offline demo: resnet20 teacher then a KD resnet8 student on CIFAR-10")
    p.add_argument("--data-root", default=os.environ.get("CKTF_DATA_ROOT", "data"), help="folder with cifar10 data")
    p.add_argument("--out-dir", default="runs/quickstart")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-subset", type=int, default=10000)
    p.add_argument("--test-subset", type=int, default=2000)
    p.add_argument("--mlflow-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_quickstart)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cktf")
    except PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
        import cktf

        return cktf.__version__


def main(argv: Sequence[str] | None = None) -> int:
    keep_ray_local()  # before the parser: building it imports modules that import Ray
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (CKTFError, UnknownNameError) as exc:
        print(f"cktf: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # the reader went away (cktf schema | head): end quietly, as a pipe expects
        quiet_pipe()
        return EXIT_COMPLETE


def quiet_pipe() -> None:
    """After a closed pipe: point stdout at /dev/null, so the interpreter's last flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
