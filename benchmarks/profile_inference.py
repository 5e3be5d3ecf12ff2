"""Where the time of one ``segment`` call goes (default: 2048^2 synthetic H&E RGB).

Two profiles of the same call (after an untimed warm-up):

1. ``torch.profiler``: torch operators by self CPU time (the network, AdaBN statistics,
   sigmoid; numpy / scipy work shows up only as gaps);
2. ``cProfile``: Python functions by self time, and a phase table built from cumulative
   times (normalisation, AdaBN, network on tiles, blending, thresholding, watershed).
   cProfile adds overhead to Python-heavy code (many small module calls), so its absolute
   numbers are somewhat above the un-profiled run; the proportions are what matter.

Example::

    python benchmarks/profile_inference.py --size 2048
    python benchmarks/profile_inference.py --size 1024 --top 15   # quick
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import print_table  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=2048, help="square image size")
    p.add_argument("--top", type=int, default=25, help="rows per table")
    p.add_argument("--no-torch-profiler", action="store_true")
    p.add_argument("--no-cprofile", action="store_true")
    common.add_common_arguments(p)
    return p.parse_args(argv)


# --------------------------------------------------------------------------- cProfile helpers


class StatsIndex:
    def __init__(self, stats: pstats.Stats) -> None:
        self.stats = stats.stats  # {(file, line, func): (cc, nc, tt, ct, callers)}

    def _keys(self, func: str, file_part: str | None = None):
        return [k for k in self.stats if k[2] == func and (file_part is None or file_part in k[0])]

    def cumulative(self, func: str, file_part: str | None = None, caller: str | None = None) -> float:
        """Cumulative seconds of ``func`` (optionally only the calls made by ``caller``)."""
        total = 0.0
        for key in self._keys(func, file_part):
            cc, nc, tt, ct, callers = self.stats[key]
            if caller is None:
                total += ct
            else:
                total += sum(v[3] for ck, v in callers.items() if ck[2] == caller)
        return total

    def self_time(self, func: str, file_part: str | None = None) -> float:
        return sum(self.stats[k][2] for k in self._keys(func, file_part))


def top_functions(stats: pstats.Stats, n: int) -> list[dict]:
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _) in stats.stats.items():
        where = func if file == "~" else f"{Path(file).name}:{line}({func})"
        rows.append({"function": where, "calls": nc, "self_s": tt, "cumulative_s": ct})
    rows.sort(key=lambda r: r["self_s"], reverse=True)
    return rows[:n]


def phase_table(idx: StatsIndex) -> list[tuple[str, float]]:
    """(phase, seconds): cumulative times of the functions that make up segment()."""
    mn = "napari_minenet"
    return [
        ("segment (total)", idx.cumulative("segment", "segmentation.py")),
        ("  predict_tiled", idx.cumulative("predict_tiled", "inference.py")),
        ("    check_image (validation, constant / NaN checks)", idx.cumulative("check_image", "data.py")),
        ("    Normalizer.for_image", idx.cumulative("for_image", "data.py")),
        ("    prepare_network (AdaBN + BN folding)", idx.cumulative("prepare_network", "inference.py")),
        ("      adapt_batchnorm: deepcopy + statistics forward pass", idx.cumulative("adapt_batchnorm", mn)),
        ("      fuse_for_inference", idx.cumulative("fuse_for_inference", "model.py")),
        ("    Normalizer.__call__ (AdaBN sample and tiles, uint8 -> float32)", idx.cumulative("__call__", "data.py")),
        ("    network on tiles (module call from _predict_tiles)",
         idx.cumulative("_wrapped_call_impl", "torch", caller="_predict_tiles")),
        ("    blending + accumulation (self time of _predict_tiles)", idx.self_time("_predict_tiles", "inference.py")),
        ("  labels_from_probability", idx.cumulative("labels_from_probability", "postprocess.py")),
        ("    threshold_mask", idx.cumulative("threshold_mask", "postprocess.py")),
        ("    binary_fill_holes", idx.cumulative("binary_fill_holes", "scipy")),
        ("    split_instances", idx.cumulative("split_instances", "postprocess.py")),
        ("      watershed", idx.cumulative("watershed", "skimage")),
        ("    remove_small", idx.cumulative("remove_small", "postprocess.py")),
    ]


# --------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    args = parse_args(argv)
    common.configure_threads(args.threads)

    from napari_minenet.inference import select_device
    from napari_minenet.segmentation import labels_for, segment

    device = select_device(args.device)
    info = common.machine_info()
    print(f"Profile of one segment() call on a {args.size}^2 synthetic H&E RGB uint8 image")
    common.print_machine(info)
    bm = common.load_benchmark_model()
    model, card = bm.model, bm.model.card
    print(f"model: {bm.note}\ndevice: {device}")
    image = common.synthetic_he(args.size)
    segment(common.synthetic_he(min(args.size, card.tile_size)), model, device=device)  # warm-up (untimed)
    t0 = time.perf_counter()
    segment(image, model, device=device)
    plain_s = time.perf_counter() - t0
    print(f"un-profiled segment(): {plain_s:.2f} s ({common.mpx_per_s(image.shape[0] * image.shape[1], plain_s):.2f} Mpx/s)")
    data: dict = {"script": "profile_inference", "machine": info, "busy_warning": common.busy_warning(info),
                  "size": args.size, "device": str(device), "model": {"name": card.name, "trained": bm.trained,
                                                                     "note": bm.note},
                  "segment_s": plain_s}

    if not args.no_torch_profiler:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            segment(image, model, device=device)
        averages = prof.key_averages()
        total_self = sum(e.self_cpu_time_total for e in averages) or 1
        ops = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]
        op_rows = [{"op": e.key, "calls": e.count, "self_cpu_s": e.self_cpu_time_total / 1e6,
                    "share_of_torch_self": e.self_cpu_time_total / total_self} for e in ops]
        print_table(f"torch.profiler: top {args.top} operators by self CPU time (torch ops only; "
                    f"total torch self time {total_self / 1e6:.2f} s)",
                    ["operator", "calls", "self CPU s", "share"],
                    [[r["op"], r["calls"], r["self_cpu_s"], f"{100 * r['share_of_torch_self']:.1f}%"] for r in op_rows])
        data["torch_profiler"] = {"total_torch_self_s": total_self / 1e6, "top_ops": op_rows}

    if not args.no_cprofile:
        prof = cProfile.Profile()
        prof.enable()
        segment(image, model, device=device)
        prof.disable()
        stats = pstats.Stats(prof, stream=io.StringIO())
        idx = StatsIndex(stats)
        phases = phase_table(idx)
        total = phases[0][1] or 1
        if not bm.trained:
            prob_t, cont_t = common.truth_probabilities(args.size)
            p2 = cProfile.Profile()
            p2.enable()
            labels_for(prob_t, cont_t if card.has_contours else None, card, card.default_threshold, card.instances,
                       card.min_size)
            p2.disable()
            idx2 = StatsIndex(pstats.Stats(p2, stream=io.StringIO()))
            phases.append(("  (untrained model) labels_from_probability on ground-truth-like maps",
                           idx2.cumulative("labels_from_probability", "postprocess.py")))
            phases.append(("      of which watershed", idx2.cumulative("watershed", "skimage")))
        print_table("cProfile: phases of segment() (cumulative seconds, with profiling overhead)",
                    ["phase", "seconds", "share"],
                    [[name, s, f"{100 * s / total:.1f}%"] for name, s in phases])
        funcs = top_functions(stats, args.top)
        print_table(f"cProfile: top {args.top} functions by self time", ["function", "calls", "self s", "cumulative s"],
                    [[r["function"][:110], r["calls"], r["self_s"], r["cumulative_s"]] for r in funcs])
        data["cprofile"] = {"phases": [{"phase": n.strip(), "depth": (len(n) - len(n.lstrip())) // 2, "seconds": s}
                                       for n, s in phases], "top_functions": funcs}
    common.write_json(args.json, data)
    return data


if __name__ == "__main__":
    main()
