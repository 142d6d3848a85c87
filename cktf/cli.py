"""The ``cktf`` command line: thin wrappers around the registries and the trainer.

Every user error (unknown name, missing data, bad value) is printed as one line naming the
field and the fix, and exits with code 2 before any training starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import CKTFError
from .registry import UnknownNameError

EXIT_USAGE = 2

# ----------------------------------------------------------------------------- dataclass <-> argparse


def _add_dataclass_args(parser: argparse.ArgumentParser, cls: type, prefix: str, skip: Sequence[str] = ()) -> None:
    """One ``--flag`` per dataclass field (``data.root`` -> ``--data-root``), defaults taken from the dataclass."""
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + (prefix + f.name).replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        dest = f"{cls.__name__}.{f.name}"
        help_ = f"(default: {default})"
        kind = str(f.type).split("|")[0].strip()  # "int | None" -> "int" (annotations are strings here)
        if isinstance(default, bool) or kind == "bool":
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif isinstance(default, tuple):
            group.add_argument(flag, dest=dest, type=int, nargs="*", default=None, help=help_)
        else:
            typ = {"int": int, "float": float}.get(kind, type(default) if default is not None else str)
            group.add_argument(flag, dest=dest, type=typ, default=None, help=help_)


def _dataclass_from_args(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    values = {f.name: getattr(args, f"{cls.__name__}.{f.name}", None) for f in dataclasses.fields(cls)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if v is not None}
    values.update({k: v for k, v in fixed.items() if v is not None})
    return cls(**values)


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``--set alpha=0.9 --set temperature=4`` -> dict (values parsed as JSON when possible)."""
    out: dict[str, Any] = {}
    for item in items or ():
        if "=" not in item:
            raise CKTFError(f"--set {item!r}: expected KEY=VALUE, e.g. --set alpha=0.9")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


# ----------------------------------------------------------------------------- commands


def cmd_models(args: argparse.Namespace) -> int:
    from .models import MODELS, create_model

    print(f"{'model':<12} {'family':<15} {'inputs':<8} {'params(M)':>9} {'modules':>7} {'features':>8}")
    for name in MODELS.names(args.filter):
        m = create_model(name, num_classes=100)
        n = sum(p.numel() for p in m.parameters()) / 1e6
        sizes = "/".join(map(str, m.input_sizes))
        family = MODELS.meta(name).get("family", "")
        print(f"{name:<12} {family:<15} {sizes:<8} {n:>9.2f} {len(m.feature_info):>7} {m.num_features:>8}")
    return 0


def cmd_distillers(args: argparse.Namespace) -> int:
    import fnmatch

    from .distillers import DISTILLERS, objective_names, split_name

    print(f"{'distiller':<14} {'teacher':<7} {'needs':<22} summary")
    for name in (n for n in objective_names() if fnmatch.fnmatch(n, args.filter)):
        primary, secondary = split_name(name)
        classes = [DISTILLERS.get(n) for n in (primary, secondary) if n]
        needs = ",".join(sorted(set().union(*(c.requires for c in classes)))) or "-"
        teacher = "yes" if any(c.needs_teacher for c in classes) else "no"
        if secondary is None:
            summary = DISTILLERS.meta(primary).get("summary", "") + (
                f" (preset of {primary})" if name != primary else ""
            )
        else:
            summary = f"Eq. 1: gamma*CE + {primary} + theta*{secondary} (fields: {secondary}.<field>, theta)"
        print(f"{name:<14} {teacher:<7} {needs:<22} {summary}")
        if args.fields and secondary is None:
            from .distillers.compose import resolve_preset

            preset = resolve_preset(name, {})[1]  # a preset's own values (cktf-paper: alpha1 0.8, alpha2 0.2)
            for f in dataclasses.fields(classes[0].config_cls):
                print(f"{'':<16}{f.name} = {preset.get(f.name, f.default)}")
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

    data = _dataclass_from_args(DataConfig, args, dataset=args.dataset)
    optim = _dataclass_from_args(OptimConfig, args)
    train = _dataclass_from_args(TrainConfig, args)
    out_dir = args.out_dir or str(Path("runs") / f"{data.dataset}-{args.model}-{distiller}")
    return RunConfig(
        student=args.model,
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
    return _train(_run_config(args, "ce", _parse_set(args.set), None), args)


def cmd_distill(args: argparse.Namespace) -> int:
    return _train(_run_config(args, args.distiller, _parse_set(args.set), args.teacher_ckpt), args)


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
    student = dataclasses.replace(
        teacher,
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
    out: dict[str, Any] = _parse_set(getattr(args, "set", None) or [])
    if getattr(args, "data_root", None):
        out["data.root"] = args.data_root
    return out


def cmd_tune(args: argparse.Namespace) -> int:
    """Run or resume a study; exit 0 when complete, 3 when it ended early (resume it with --resume)."""
    from .tune.driver import run_study
    from .tune.study import load_study

    cfg = load_study(args.study, _overrides(args))
    outcome = run_study(cfg, resume=args.resume, progress=not args.quiet)
    counts = ", ".join(f"{k} {v}" for k, v in outcome.counts.items() if v)
    print(f"study {cfg.name}: {'complete' if outcome.complete else 'INCOMPLETE'} ({counts}) in {outcome.wall_s:.0f}s")
    if outcome.best:
        b = outcome.best
        test = b.get("test_acc") or float("nan")
        print(f"best trial {b['trial_id']}: val {b['best_val_acc']:.2f}%  test {test:.2f}%")
    print(f"study dir: {outcome.study_dir}  (cktf report / cktf export {outcome.study_dir} --out student.safetensors)")
    if not outcome.complete:
        print(f"cktf: the study ended early; continue it with: cktf tune {args.study} --resume", file=sys.stderr)
        return 3
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .tune.export import export_best

    info = export_best(args.study, args.out, onnx=args.onnx)
    print(
        f"wrote {args.out} (+ {Path(args.out).with_suffix('.json').name}): {info['architecture']} from trial"
        f" {info['trial']}, val {info['metric']['value']:.2f}%, test {info['test_acc'] or float('nan'):.2f}%"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .tune.export import resolve_study_dir
    from .tune.report import write_report

    out = write_report(resolve_study_dir(args.study), top_k=args.top_k)
    print((out / "summary.md").read_text())
    print(f"report written to {out}/")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """Open the MLflow UI on the study store, bound to localhost (port-forward to reach it remotely)."""
    import subprocess

    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", args.tracking_uri]
    cmd += ["--host", args.host, "--port", str(args.port)]
    print("running:", " ".join(cmd))
    if args.dry_run:
        return 0
    return subprocess.call(cmd)


def cmd_probe(args: argparse.Namespace) -> int:
    """Linear probe of a trained/distilled model on a labeled dataset (Section 3.2, step 2)."""
    from .data import DataConfig, load_splits
    from .train.checkpoint import load_model
    from .train.runner import resolve_device
    from .transfer import ProbeConfig, linear_probe

    data = _dataclass_from_args(DataConfig, args, dataset=args.dataset)
    cfg = _dataclass_from_args(ProbeConfig, args)
    cfg.validate()
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

    p.add_argument("--model", required=True, help="architecture (see `cktf models`)")
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
    _add_dataclass_args(p, DataConfig, "data-", skip=("dataset",))
    _add_dataclass_args(p, OptimConfig, "")
    _add_dataclass_args(p, TrainConfig, "")


def build_parser() -> argparse.ArgumentParser:
    from .data import DataConfig
    from .transfer import ProbeConfig

    parser = argparse.ArgumentParser(prog="cktf", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the model zoo")
    p.add_argument("--filter", default="*", help="glob on names, e.g. 'resnet*'")
    p.set_defaults(func=cmd_models)

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
    p.add_argument("--resume", action="store_true", help="continue an interrupted study (finished trials are kept)")
    p.add_argument("--data-root", default=None, help="override data.root of the study file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a study field (search.num_samples=4)")
    p.add_argument("--quiet", action="store_true", help="no Ray progress tables")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("export", help="write the best finished trial's student (.safetensors + .json)")
    p.add_argument("study", help="study directory, study YAML or study name")
    p.add_argument("--out", required=True, help="output .safetensors path")
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
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("probe", help="linear probe of a model's frozen features on a labeled dataset")
    p.add_argument("--weights", required=True, help="a cktf .safetensors (e.g. a distilled student)")
    p.add_argument("--dataset", default="stl10", help="labeled target dataset (default: stl10)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="write the per-epoch curve and summary as JSON")
    p.add_argument("--quiet", action="store_true")
    _add_dataclass_args(p, DataConfig, "data-", skip=("dataset",))
    _add_dataclass_args(p, ProbeConfig, "")
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (CKTFError, UnknownNameError) as exc:
        print(f"cktf: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
