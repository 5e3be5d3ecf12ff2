"""Run every benchmark and write docs/benchmarks.md and docs/benchmarks.json.

Each benchmark runs as its own subprocess (``throughput.py``, ``finetune_speed.py``,
``onnx_speed.py``, ``profile_inference.py``) with ``--json``; this script gathers the JSON
files and writes the report. Synthetic data only: it runs on a machine without ``../shared``.

Examples::

    python benchmarks/run_all.py                 # full run (an hour or more on 2 CPU cores)
    python benchmarks/run_all.py --quick         # small sizes, 1 repeat: checks that everything runs

``--quick`` writes to ``benchmarks/results-quick/`` unless ``--out-dir`` is given, so a check
never overwrites the published numbers in ``docs/``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import BENCH_DIR, REPO_ROOT, fmt_bytes  # noqa: E402

SCRIPTS = ("throughput", "finetune_speed", "onnx_speed", "profile_inference")


def parse_args(argv=None) -> argparse.Namespace:
    # `napari-minenet bench ...` runs this script with its options; it names itself in the usage line
    p = argparse.ArgumentParser(prog=os.environ.get("NAPARI_MINENET_BENCH_PROG") or None,
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, 1 repeat (a check, not a measurement)")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="where benchmarks.md / benchmarks.json go (default: docs/, or benchmarks/results-quick/ "
                        "with --quick)")
    p.add_argument("--only", nargs="+", choices=SCRIPTS, default=None, help="run only these benchmarks")
    p.add_argument("--threads", type=int, default=None, help="passed to every benchmark")
    p.add_argument("--device", default="auto", help="passed to throughput and profile_inference")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="override throughput sizes")
    p.add_argument("--memory-sizes", type=int, nargs="*", default=None, help="override peak-RSS sizes")
    p.add_argument("--finetune-seconds", type=float, default=None, help="override the fit() budget per network")
    p.add_argument("--compile", action="store_true", help="throughput: also time torch.compile")
    p.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per benchmark before it is abandoned")
    p.add_argument("--report-only", action="store_true",
                   help="re-render benchmarks.md from the existing benchmarks.json and docs/quality/ (runs nothing)")
    return p.parse_args(argv)


def commands(args: argparse.Namespace, json_dir: Path) -> dict[str, list[str]]:
    py = sys.executable
    common_opts = ["--threads", str(args.threads)] if args.threads else []
    dev = ["--device", args.device]
    if args.quick:
        tp = ["--sizes", "512", "1024", "--repeats", "1", "--large-repeats", "1", "--memory-sizes", "512", "1024"]
        ft = ["--seconds", "10", "--unet-seconds", "15", "--split-repeats", "2", "--warmup-steps", "1",
              "--product-finetune"]
        ox = ["--sizes", "512", "1024", "--repeats", "1"]
        pr = ["--size", "1024", "--top", "15"]
    else:
        tp, ft, ox, pr = [], ["--product-finetune"], [], []
    if args.sizes:
        tp += ["--sizes", *map(str, args.sizes)]
    if args.memory_sizes is not None:
        tp += ["--memory-sizes", *map(str, args.memory_sizes)]
    if args.finetune_seconds:
        ft += ["--seconds", str(args.finetune_seconds), "--unet-seconds", str(args.finetune_seconds)]
    if args.compile:
        tp += ["--compile"]
    base = {
        "throughput": [py, str(BENCH_DIR / "throughput.py"), *tp, *dev],
        "finetune_speed": [py, str(BENCH_DIR / "finetune_speed.py"), *ft],
        "onnx_speed": [py, str(BENCH_DIR / "onnx_speed.py"), *ox],
        "profile_inference": [py, str(BENCH_DIR / "profile_inference.py"), *pr, *dev],
    }
    return {name: cmd + common_opts + ["--json", str(json_dir / f"{name}.json")] for name, cmd in base.items()}


def run(name: str, cmd: list[str], json_path: Path, timeout: float) -> dict:
    print(f"\n{'=' * 100}\n{name}: {' '.join(Path(c).name if c.endswith('.py') else c for c in cmd[1:])}\n{'=' * 100}",
          flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, timeout=timeout, cwd=REPO_ROOT)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    if rc != 0 or not json_path.is_file():
        return {"error": f"exit status {rc}" + ("" if json_path.is_file() else ", no JSON written"), "wall_s": wall}
    data = json.loads(json_path.read_text(encoding="utf-8"))
    data["wall_s"] = wall
    return data


# --------------------------------------------------------------------------- markdown


def _f(v, digits: int = 2, suffix: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and v != v:
        return "-"
    return f"{v:.{digits}f}{suffix}"


def _table(headers: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out + [""]


def _flops_sentence(f: dict) -> str:
    mini, unet = f.get("minenet"), f.get("unet")
    if not mini:
        return ""
    text = f" Forward FLOPs per pixel: Mini-Net {mini:,.0f}"
    if unet:
        text += f", U-Net {unet:,.0f} ({unet / mini:.0f}x the arithmetic)"
    return text + "."


def _met(v) -> str:
    return "not measured" if v is None else ("**met**" if v else "**missed**")


def markdown(report: dict) -> str:
    res = report["results"]
    machine = report["machine"]
    md = ["# Benchmarks: speed, memory and quality side by side", ""]
    md.append(f"Generated {report['date']} by `{report['command']}`"
              + (" (**quick mode: small sizes, 1 repeat; a check that the scripts run, not a measurement**)"
                 if report["quick"] else "") + ".")
    md.append("")
    md.append("All images are **synthetic** H&E-like RGB uint8 images (pink background, purple nuclei, noise; "
              "`benchmarks/common.py`), so the benchmarks run anywhere without `../shared`. Speed and memory do not "
              "depend on the data. Quality on real data comes from the JSON files in `docs/quality/`, measured "
              "with `../shared` by the commands listed in that section.")
    md.append("")
    busy = [d.get("busy_warning") for d in res.values() if isinstance(d, dict) and d.get("busy_warning")]
    if busy:
        md += [f"> {busy[0]}", ""]
    model_note = next((d["model"]["note"] for d in res.values() if isinstance(d, dict) and "model" in d
                       and isinstance(d["model"], dict) and "note" in d["model"]), None)
    if model_note:
        md += [f"Model: {model_note}.", ""]

    md += ["## Machine", ""]
    md += _table(["", ""], [
        ["CPU", f"{machine['cpu']} ({machine['cpus_usable']} usable cores)"],
        ["memory", fmt_bytes(machine.get("memory_total"))],
        ["GPU", machine.get("gpu") or "none"],
        ["torch", f"{machine['torch']} ({machine['torch_threads']} threads)"],
        ["python / numpy", f"{machine['python']} / {machine['numpy']}"],
        ["platform", machine["platform"]],
        ["load average at start", ", ".join(map(str, machine.get("load_average") or []))],
        ["date (UTC)", machine["date"]],
    ])

    # targets
    targets = []
    tp = res.get("throughput", {})
    ft = res.get("finetune_speed", {})
    for t in tp.get("targets", []) + ft.get("targets", []):
        met = _met(t.get("met")) + (" (stretch met)" if t.get("stretch_met") else "")
        targets.append([t["target"], t["measured"], met])
    md += ["## Targets", ""]
    md += _table(["target", "measured", "result"], targets) if targets else ["(no targets measured)", ""]

    if "sizes" in tp:
        md += ["## Segmentation throughput (image in, labels out)", ""]
        m = tp["model"]
        md.append(f"`segment()` on `{tp['device']}`, tile {m['tile_size']} px, overlap {m['overlap']} px, "
                  f"batch {m['batch_size']}; median of the repeats. `prepare` (Normalizer + AdaBN statistics + BN "
                  f"folding) is part of `predict_tiled`. Mini-Net/U-Net compares `predict_tiled` with "
                  f"`predict_tiled` (same tiles, same AdaBN); Mini-Net/RF compares `segment()` with the random "
                  f"forest's features + prediction (pixel classes only, no instances). Parameters: Mini-Net "
                  f"{m['parameters']:,}, U-Net {tp['unet']['parameters'] or 0:,}."
                  + _flops_sentence(tp.get("flops_per_pixel") or {}))
        md.append("")
        rows = []
        for r in tp["sizes"]:
            unet = r["unet"]
            rf = r["rf"]
            rows.append([
                f"{r['size']}²", r["repeats"], _f(r["segment_mpx_s"]), _f(r["segment_s"]), _f(r["predict_s"]),
                _f(r["prepare_s"]), _f(r["postprocess_s"], 3), _f(r.get("postprocess_truth_s"), 3),
                "skipped" if "skipped" in unet else _f(unet["predict_mpx_s"], 3),
                _f(r.get("ratio_unet"), 1, "x"),
                "skipped" if "skipped" in rf else _f(rf["mpx_s"]), _f(r.get("ratio_rf"), 1, "x"),
            ])
        md += _table(["size", "reps", "segment Mpx/s", "segment s", "predict_tiled s", "prepare s",
                      "postprocess s", "postprocess s (truth-like maps)", "U-Net Mpx/s", "Mini-Net/U-Net",
                      "RF Mpx/s", "Mini-Net/RF"], rows)
        if not tp["model"]["trained"]:
            md += ["The model is untrained, so post-processing of its own output is not representative; the "
                   "'truth-like maps' column times `labels_from_probability` on the probability maps a good model "
                   "would give on the synthetic image (one object per synthetic nucleus).", ""]
        skipped = [f"{r['size']}²: U-Net {r['unet']['skipped']}" for r in tp["sizes"] if "skipped" in r["unet"]]
        skipped += [f"{r['size']}²: RF {r['rf']['skipped']}" for r in tp["sizes"] if "skipped" in r["rf"]]
        if skipped:
            md += ["Skipped: " + "; ".join(skipped) + ".", ""]
        q = [r for r in tp["sizes"] if r.get("f1_synthetic") is not None or r["rf"].get("f1_synthetic") is not None]
        if q:
            md += ["Pixel F1 against the synthetic truth (informative only; the synthetic image is not real H&E):", ""]
            md += _table(["size", "Mini-Net", "random forest"],
                         [[f"{r['size']}²", _f(r.get("f1_synthetic"), 3), _f(r["rf"].get("f1_synthetic"), 3)]
                          for r in q])
        rf_train = (tp.get("rf") or {}).get("training") or {}
        if "train_s" in rf_train:
            md += [f"Random forest (ilastik-style): `multiscale_basic_features` ({rf_train['features']} features) + "
                   f"`RandomForestClassifier(n_estimators=50, max_depth=10, n_jobs=-1)`, trained in "
                   f"{rf_train['train_s']:.2f} s on a {rf_train['crop']} crop with {rf_train['labelled_pixels']} "
                   "scribble pixels.", ""]

        md += ["## Peak memory of `segment()`", ""]
        mem = tp.get("memory", [])
        if mem:
            md += ["One fresh child process per size; peak RSS is the process's high-water mark (VmHWM); baseline = "
                   "RSS after imports and model load; the input image is included in the peak.", ""]
            md += _table(["size", "peak RSS", "baseline", "image", "extra (peak - baseline)", "extra bytes/pixel",
                          "peak during predict (sampled)", "peak during post-processing (sampled)", "seconds"],
                         [[f"{x['size']}²", fmt_bytes(x.get("peak_rss")), fmt_bytes(x.get("baseline_rss")),
                           fmt_bytes(x.get("image_bytes")), fmt_bytes(x.get("extra")), _f(x.get("extra_per_pixel"), 1),
                           fmt_bytes(x.get("peak_rss_predict_sampled")),
                           fmt_bytes(x.get("peak_rss_postprocess_sampled")),
                           _f(x.get("seconds"), 1) if "error" not in x else x["error"]] for x in mem])
            if not tp["model"]["trained"]:
                md += ["The model is untrained: its output is speckle (many tiny objects), so the post-processing part "
                       "of these peaks is not representative of a trained model.", ""]
        else:
            md += ["Not measured.", ""]

        md += ["## GPU", ""]
        cuda = tp.get("cuda", {})
        if "skipped" in cuda:
            md += [f"Skipped: {cuda['skipped']}.", ""]
        else:
            md += [f"`predict_tiled` on {cuda.get('device')} (median after one warm-up).", ""]
            md += _table(["size", "precision", "tile batch", "seconds", "Mpx/s", "GPU peak memory", "note"],
                         [[f"{r['size']}²", r["precision"], r.get("batch_size", "-"), _f(r.get("predict_s"), 3),
                           _f(r.get("mpx_s")), fmt_bytes(r.get("gpu_peak_bytes")),
                           r.get("error") or r.get("skipped") or ""] for r in cuda.get("rows", [])])
        if tp.get("compiled"):
            md += ["`torch.compile` (benchmark-only patch of `prepare_network`):", ""]
            md += _table(["size", "device", "first call s", "median s", "Mpx/s", "note"],
                         [[f"{r['size']}²", r["device"], _f(r.get("first_call_s")), _f(r.get("predict_s")),
                           _f(r.get("mpx_s")), r.get("error", "")] for r in tp["compiled"]])
    elif "error" in tp:
        md += ["## Segmentation throughput", "", f"Failed: {tp['error']}", ""]

    md += ["## Fine-tuning speed", ""]
    if "rows" in ft:
        md += [f"`training.fit` (the product loop: PatchSampler batch of {ft['batch_size']} patches of "
               f"{ft['patch_size']}² from one image with augmentation, MiniNetLoss + L2-SP, Adam, channels_last) "
               "within a time budget; patches/s = batch / median step time after warm-up. The split times "
               "`PatchSampler.sample()` alone and the torch step alone.", ""]
        md += _table(["network", "device", "parameters", "steps", "median step s", "patches/s", "average patches/s",
                      "sampler alone patches/s", "torch step alone patches/s"],
                     [[r["network"], r["device"], f"{r['parameters']:,}", r["steps"], _f(r["median_step_s"]),
                       _f(r["patches_per_s"]), _f(r["average_patches_per_s"]), _f(r["sampler_patches_per_s"], 1),
                       _f(r["compute_patches_per_s"])] for r in ft["rows"]])
        for dev, ratio in ft.get("ratios_mini_over_unet", {}).items():
            md.append(f"Mini-Net / U-Net on {dev}: {ratio:.1f}x patches/s.")
        for r in ft["rows"]:
            pf = r.get("product_finetune")
            if pf:
                md.append(f"`finetune()` on {r['device']} (held-out validation every 10 steps included): "
                          f"{pf['steps']} steps in {pf['seconds']:.1f} s = {_f(pf['effective_patches_per_s'])} "
                          "patches/s effective.")
        md.append("")
    else:
        md += [f"Failed or not run: {ft.get('error', 'not run')}", ""]

    ox = res.get("onnx_speed", {})
    md += ["## ONNX Runtime vs torch (network alone, whole image)", ""]
    if "rows" in ox:
        md += ["ONNX: the `export_onnx` graph on ONNX Runtime (CPU), input float32 (1, 3, H, W) = pixels / 255. "
               "**The exported graph's BatchNorms use the statistics of the whole input (no tiling)**, computed in "
               "the graph. torch: the prepared network (AdaBN statistics folded into the convolutions, channels_last) "
               "on the whole image, untiled; `prepare` is timed separately. 'ORT BN folded' exports that prepared "
               "network (benchmark only) to show what ONNX Runtime does with the same arithmetic as torch.", ""]
        md += _table(["size", "ORT (export) Mpx/s", "torch network Mpx/s", "ORT / torch", "ORT BN folded Mpx/s",
                      "torch same graph (eager) Mpx/s", "torch prepare s", "predict_tiled Mpx/s",
                      "max abs diff ORT vs torch"],
                     [[f"{r['size']}²", _f(r["ort_mpx_s"]), _f(r["torch_network_mpx_s"]),
                       _f(r["ort_over_torch_network"], 2, "x"), _f(r.get("ort_folded_mpx_s")),
                       _f(r["torch_same_graph_mpx_s"]), _f(r["prepare_s"]), _f(r.get("predict_tiled_mpx_s")),
                       f"{r['max_abs_diff_ort_vs_torch_product']:.1e}"] for r in ox["rows"]])
    else:
        md += [f"Failed or not run: {ox.get('error', 'not run')}", ""]

    pr = res.get("profile_inference", {})
    md += ["## Where the time goes (profile of one `segment()` call)", ""]
    if "cprofile" in pr or "torch_profiler" in pr:
        md.append(f"{pr['size']}² image on {pr['device']}; un-profiled call {pr['segment_s']:.2f} s.")
        md.append("")
        if "cprofile" in pr:
            md += ["cProfile phases (cumulative seconds; cProfile inflates Python-heavy parts):", ""]
            phases = pr["cprofile"]["phases"]
            total = phases[0]["seconds"] or 1
            md += _table(["phase", "seconds", "share"],
                         [["&nbsp;" * 4 * p["depth"] + p["phase"], _f(p["seconds"], 3),
                           f"{100 * p['seconds'] / total:.1f}%"] for p in phases])
        if "torch_profiler" in pr:
            md += ["torch operators by self CPU time (top 10):", ""]
            md += _table(["operator", "calls", "self CPU s", "share of torch time"],
                         [[o["op"], o["calls"], _f(o["self_cpu_s"], 3), f"{100 * o['share_of_torch_self']:.1f}%"]
                          for o in pr["torch_profiler"]["top_ops"][:10]])
    else:
        md += [f"Failed or not run: {pr.get('error', 'not run')}", ""]

    md += quality_section(QUALITY_DIR)

    md += ["## Reproduce", "", "```", "pip install -e '.[bench]'",
           "python benchmarks/run_all.py            # everything, writes docs/benchmarks.md and .json",
           "python benchmarks/run_all.py --quick    # a quick check (benchmarks/results-quick/)",
           "python benchmarks/throughput.py --sizes 512 1024 2048 --repeats 3",
           "python benchmarks/finetune_speed.py --seconds 60",
           "python benchmarks/onnx_speed.py --sizes 512 1024 2048",
           "python benchmarks/profile_inference.py --size 2048", "```", "",
           f"Wall time of this run: {sum(d.get('wall_s', 0) for d in res.values() if isinstance(d, dict)) / 60:.1f} "
           "min."]
    return "\n".join(md) + "\n"


QUALITY_DIR = REPO_ROOT / "docs" / "quality"


def quality_section(folder: Path) -> list[str]:
    """Quality on real data: ``evaluate --json`` reports and ``human_in_the_loop.py --json`` reports.

    These need ../shared, so they are measured separately and committed as JSON; the speed
    run only renders them (and says so when there are none).
    """
    md = ["## Quality on real data", ""]
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    evals, loops = [], []
    for f in files:
        data = json.loads(f.read_text(encoding="utf-8"))
        (loops if "rows" in data else evals).append((f, data))
    if not files:
        return md + [f"No quality reports in `{folder.relative_to(REPO_ROOT)}` (they need the datasets in "
                     "../shared; see docs/results.md).", ""]
    if evals:
        md += ["Each network trained by the same `napari-minenet train` command and time budget on the same "
               "CPU, scored by `napari-minenet evaluate` (inside the FOV where the dataset has one):", ""]
        rows = []
        for f, d in evals:
            info, m = d.get("model_info", {}), d["mean"]
            arch = info.get("architecture", {}).get("name", "?") if isinstance(info.get("architecture"), dict) \
                else info.get("architecture", "?")
            rows.append([d["model"], arch, f"{info['parameters']:,}" if "parameters" in info else "-",
                         f"`{d['data']}`", info.get("steps", "-"),
                         _f(info["duration_s"] / 60, 0, " min") if "duration_s" in info else "-",
                         info.get("test_time_augmentation", "-"),
                         *(_f(m.get(k), 4) for k in ("f1", "auc", "se", "sp", "acc")), f"`{f.name}`"])
        md += _table(["model", "network", "parameters", "test data", "training steps", "training time",
                      "TTA views", "F1", "AUC", "Se", "Sp", "Acc", "report"], rows)
        md += [f"Note (`{f.name}`): {d['note']}" for f, d in evals if d.get("note")] + [""]
    for f, d in loops:
        md += [f"Fine-tuning from K corrected crops vs a random-forest pixel classifier trained on the *same* "
               f"crops (`{f.name}`; `benchmarks/human_in_the_loop.py`): model `{d['model']}` on `{d['data']}`, "
               f"{d['seconds']:.0f} s budget, fine-tuning `train={d['config'].get('train', 'all')}` lr "
               f"{d['config']['lr']:g}, crops <= {d['crop']} px, seeds {d['seeds']}; mean over seeds of the "
               "F1 on the images not used for fine-tuning." + (f" Note: {d['note']}" if d.get("note") else ""), ""]
        rows = []
        for k in sorted({r["k"] for r in d["rows"]}):
            rs = [r for r in d["rows"] if r["k"] == k]

            def mean(key: str, sub: str = "f1", rs=rs):
                vals = [r[key][sub] for r in rs if isinstance(r.get(key), dict) and sub in r[key]]
                return sum(vals) / len(vals) if vals else None

            rows.append([k, rs[0]["n_test"], _f(mean("before"), 4), _f(mean("candidate"), 4), _f(mean("kept"), 4),
                         f"{sum(r['accepted'] for r in rs)}/{len(rs)}", _f(mean("random_forest"), 4)])
        md += _table(["K", "test images", "Mini-Net before", "Mini-Net fine-tuned (candidate)",
                      "Mini-Net kept (guarded)", "versions kept", "random forest, same crops"], rows)
    return md


#: a section of docs/benchmarks.md holding this line was written by hand from runs this script
#: does not make (a GPU, real data, whole slides, a cluster): rewriting the file keeps it, also in
#: place of a section of the same heading the script generates (delete the line to let it)
HAND_WRITTEN = "<!-- hand-written: run_all.py keeps this section -->"


def _sections(md: str) -> list[tuple[str, str]]:
    """(heading, text) of each '## ' section; the text before the first one has heading ''."""
    out: list[tuple[str, str]] = [("", "")]
    for line in md.splitlines(keepends=True):
        if line.startswith("## "):
            out.append((line.strip(), ""))
        out[-1] = (out[-1][0], out[-1][1] + line)
    return out


def keep_hand_written(new: str, old: str | None) -> str:
    """``new`` with the hand-written sections of ``old`` kept: each replaces the generated section
    of the same heading, or, where there is none, goes before '## Reproduce' (in its old order)."""
    if not old:
        return new
    kept = {h: text for h, text in _sections(old) if h and HAND_WRITTEN in text}
    sections = [(h, kept.pop(h, text)) for h, text in _sections(new)]
    at = next((i for i, (h, _) in enumerate(sections) if h == "## Reproduce"), len(sections))
    sections[at:at] = list(kept.items())
    return "".join(text if text.endswith("\n") else text + "\n" for _, text in sections if text)


def _write_markdown(path: Path, report: dict) -> None:
    old = path.read_text(encoding="utf-8") if path.is_file() else None
    path.write_text(keep_hand_written(markdown(report), old), encoding="utf-8")


def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = args.out_dir or (BENCH_DIR / "results-quick" if args.quick else REPO_ROOT / "docs")
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        report = json.loads((out_dir / "benchmarks.json").read_text(encoding="utf-8"))
        _write_markdown(out_dir / "benchmarks.md", report)
        print(f"report re-rendered in {out_dir / 'benchmarks.md'}")
        return 0
    common.configure_threads(args.threads)
    machine = common.machine_info()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        json_dir = Path(tmp)
        cmds = commands(args, json_dir)
        for name in args.only or SCRIPTS:
            results[name] = run(name, cmds[name], json_dir / f"{name}.json", args.timeout)
    report = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/run_all.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "quick": args.quick,
        "synthetic_data_only": True,
        "machine": machine,
        "results": results,
    }
    common.write_json(out_dir / "benchmarks.json", report)
    md_path = out_dir / "benchmarks.md"
    _write_markdown(md_path, report)
    print(f"report written to {md_path}")
    failed = [n for n, d in results.items() if "error" in d]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
