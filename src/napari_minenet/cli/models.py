"""``napari-minenet models``, ``evaluate``, ``export`` and ``bench``."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from .common import LazyProgress, int_in, number

__all__ = ["add_models_parser", "add_evaluate_parser", "add_export_parser", "add_bench_parser"]


def _cmd_models(args: argparse.Namespace) -> int:
    from ..zoo import list_models, user_models_dir

    models = list_models()
    if not models:
        print("no models found")
        return 1
    print(f"{'name':<28} {'task':<8} {'source':<8} {'metrics':<44} parent")
    for m in models:
        metrics = ""
        splits = sorted((m.metrics or {}).items(), key=lambda kv: not kv[0].startswith("test"))
        for split, values in splits:
            if isinstance(values, dict):
                shown = " ".join(f"{k}={values[k]:.3f}" for k in ("f1", "aji", "auc", "jaccard")
                                 if isinstance(values.get(k), (int, float)) and not isinstance(values[k], bool))
                metrics = f"{split.split(':')[0].split(',')[0]}: {shown}"
                break
        print(f"{m.name:<28} {m.task:<8} {m.source:<8} {metrics:<44} {m.parent or ''}")
    print(f"\nuser models folder: {user_models_dir()}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:

    from ..evaluation import METRIC_KEYS, evaluate
    from ..zoo import atomic_write_json

    bar = LazyProgress("evaluating", "image")
    try:
        report = evaluate(args.data, args.model, device=args.device, threshold=args.threshold,
                          use_contours=not args.ignore_contours, ids=args.ids, progress=bar)
    finally:
        bar.close()
    keys = [k for k in METRIC_KEYS if k in report["mean"]]
    print(f"model {report['model']} on {report['data']} (threshold {report['threshold']:.2f})")
    print(f"{'id':<28}" + "".join(f"{k:>9}" for k in keys))
    for row in report["per_image"]:
        print(f"{row['id']:<28}" + "".join(f"{row[k]:>9.4f}" if k in row else f"{'-':>9}" for k in keys))
    print(f"{'mean':<28}" + "".join(f"{report['mean'][k]:>9.4f}" for k in keys))
    if args.json:
        atomic_write_json(args.json, report)
        print(f"wrote {args.json}")
    if args.record:
        from ..zoo import load_model, save_model

        model = load_model(args.model)
        key = args.record if args.record != "auto" else f"test: {args.data}"
        model.card.metrics[key] = {"data": str(args.data), "command": "napari-minenet " + " ".join(
            shlex.quote(a) for a in sys.argv[1:]), "threshold": report["threshold"], **report["mean"]}
        save_model(model, model.path, overwrite=True)  # the same model, its card updated
        print(f"recorded in the model card of {model.card.name} as {key!r}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ..export import export_onnx

    path = export_onnx(args.model, args.output, opset=args.opset)
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import subprocess

    script = Path(__file__).resolve().parents[3] / "benchmarks" / "run_all.py"
    if not script.is_file():
        print("error: the benchmarks ship with the source repository (benchmarks/run_all.py), "
              "not with the installed package", file=sys.stderr)
        return 2
    env = dict(os.environ, NAPARI_MINENET_BENCH_PROG="napari-minenet bench")
    return subprocess.call([sys.executable, str(script), *args.bench_args], env=env)


def add_models_parser(sub) -> None:
    """The ``models`` subcommand (``sub``: the parser's subparsers)."""
    p = sub.add_parser("models", help="list built-in and user models")
    p.set_defaults(func=_cmd_models)


def add_evaluate_parser(sub) -> None:
    """The ``evaluate`` subcommand (``sub``: the parser's subparsers)."""
    p = sub.add_parser("evaluate", help="score a model on a dataset folder (images/, masks/, ...)")
    p.add_argument("--data", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--threshold", type=number(lo=0.0, hi=1.0), default=None)
    p.add_argument("--json", help="write the report as JSON")
    p.add_argument("--ids", nargs="+", help="only these image ids (e.g. the validation images in a model card)")
    p.add_argument("--record", nargs="?", const="auto", metavar="KEY",
                   help="also store the mean metrics in the model's card (under KEY, default 'test: DATA')")
    p.add_argument("--ignore-contours", action="store_true",
                   help="split instances without the contour channel (to measure what it gains)")
    p.set_defaults(func=_cmd_evaluate)


def add_export_parser(sub) -> None:
    """The ``export`` subcommand (``sub``: the parser's subparsers)."""
    p = sub.add_parser("export", help="export a model to ONNX")
    p.add_argument("--model", required=True, help="model name or path")
    p.add_argument("-o", "--output", required=True, help="output .onnx path")
    p.add_argument("--opset", type=int_in(7, 99), default=17)
    p.set_defaults(func=_cmd_export)


def add_bench_parser(sub) -> None:
    """The ``bench`` subcommand (``sub``: the parser's subparsers)."""
    # every option goes to benchmarks/run_all.py, whose --help lists them (main passes them on)
    p = sub.add_parser("bench", add_help=False,
                       help="speed / memory benchmarks (benchmarks/run_all.py): --quick, --only NAME..., "
                            "--out-dir DIR, --threads N, --device D, --sizes N..., --report-only; "
                            "`bench --help` lists them all")
    p.set_defaults(func=_cmd_bench, bench_args=[])
