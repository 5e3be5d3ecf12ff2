"""Shared helpers for the benchmark scripts (synthetic data, models, timing, machine, tables).

The benchmarks are scripts that print numbers; they are never run as tests. Everything here
is synthetic: the scripts run on a machine without ``../shared`` or any download.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
MPX = 1e6

# --------------------------------------------------------------------------- arguments and threads


def add_common_arguments(parser, *, device: bool = True) -> None:
    """--json, --threads (and --device) shared by every script."""
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch (and ONNX Runtime / RF) threads; default: os.cpu_count()")
    if device:
        parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, mps")


def configure_threads(threads: int | None) -> int:
    """``torch.set_num_threads(threads or os.cpu_count())``; returns the number used."""
    import torch

    n = int(threads or os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def write_json(path: str | os.PathLike | None, data: dict[str, Any]) -> None:
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    print(f"\nJSON written to {path}")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


# --------------------------------------------------------------------------- synthetic H&E

PATTERN_SIZE = 1024


@dataclass
class SyntheticPattern:
    """One PATTERN_SIZE^2 tile of synthetic H&E and its truth; larger images are tiled from it."""

    image: np.ndarray  # (P, P, 3) uint8
    labels: np.ndarray  # (P, P) uint16 instance ids
    contour: np.ndarray  # (P, P) bool, inner borders 2 px (like the training target)


_PATTERNS: dict[int, SyntheticPattern] = {}


def synthetic_pattern(seed: int = 0) -> SyntheticPattern:
    """Pink (eosin) background with smooth variation, dark purple (haematoxylin) elliptical
    nuclei of radius 4-10 px (some touching), blur and noise; cached per seed."""
    if seed in _PATTERNS:
        return _PATTERNS[seed]
    from scipy import ndimage as ndi
    from skimage.draw import ellipse
    from skimage.segmentation import find_boundaries

    p = PATTERN_SIZE
    rng = np.random.default_rng(seed)
    labels = np.zeros((p, p), np.uint16)
    n_objects = p * p // 700
    for k in range(1, n_objects + 1):
        r0, c0 = rng.uniform(0, p, size=2)
        ra, rb = rng.uniform(4, 10), rng.uniform(4, 10)
        rr, cc = ellipse(r0, c0, ra, rb, shape=(p, p), rotation=rng.uniform(0, np.pi))
        free = labels[rr, cc] == 0
        if free.mean() < 0.7:  # allow touching, not heavy overlap
            continue
        labels[rr[free], cc[free]] = k
    # renumber 1..N
    ids = np.unique(labels)
    lut = np.zeros(int(ids.max()) + 1, np.uint16)
    lut[ids] = np.arange(ids.size, dtype=np.uint16)
    labels = lut[labels]

    background = np.array([236, 176, 208], np.float32)  # pink
    nucleus = np.array([92, 52, 132], np.float32)  # purple
    smooth = ndi.gaussian_filter(rng.normal(0, 1, (p // 8, p // 8)).astype(np.float32), 2)
    smooth = np.kron(smooth / (np.abs(smooth).max() + 1e-6), np.ones((8, 8), np.float32))
    rgb = background[None, None, :] + 14.0 * smooth[..., None] * np.array([0.6, 1.0, 0.8], np.float32)
    shade = rng.uniform(0.8, 1.2, size=int(labels.max()) + 1).astype(np.float32)
    fg = labels > 0
    rgb[fg] = nucleus[None, :] * shade[labels[fg]][:, None]
    rgb = ndi.gaussian_filter(rgb, sigma=(0.8, 0.8, 0))
    rgb += rng.normal(0, 8, rgb.shape).astype(np.float32)
    image = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)

    edges = find_boundaries(labels, mode="inner")
    contour = ndi.binary_dilation(edges, iterations=1) & fg
    pattern = SyntheticPattern(image, labels, contour)
    _PATTERNS[seed] = pattern
    return pattern


def _variant(block: np.ndarray, v: int) -> np.ndarray:
    out = np.rot90(block, v % 4, axes=(0, 1))
    return out[:, ::-1] if v >= 4 else out


def tile_pattern(array: np.ndarray, h: int, w: int, *, seed: int = 0, label_offsets: bool = False,
                 out_dtype=None) -> np.ndarray:
    """An (h, w, ...) array filled block by block with rotated / flipped copies of ``array``
    (PATTERN_SIZE^2): memory is the output plus one block. ``label_offsets`` adds a distinct
    id offset per block so instance ids stay unique."""
    p = array.shape[0]
    dtype = out_dtype or array.dtype
    out = np.empty((h, w) + array.shape[2:], dtype)
    nbx = math.ceil(w / p)
    offset_step = int(array.max()) if label_offsets else 0
    for by, y in enumerate(range(0, h, p)):
        for bx, x in enumerate(range(0, w, p)):
            block = _variant(array, (by * 5 + bx * 3 + seed) % 8)
            bh, bw = min(p, h - y), min(p, w - x)
            view = out[y : y + bh, x : x + bw]
            view[...] = block[:bh, :bw]
            if label_offsets:
                fg = view > 0
                view[fg] += (by * nbx + bx) * offset_step
    return out


def synthetic_he(size: int | tuple[int, int], seed: int = 0) -> np.ndarray:
    """Synthetic H&E-like RGB uint8 image of any size, built in bounded memory."""
    h, w = (size, size) if isinstance(size, int) else size
    return tile_pattern(synthetic_pattern(seed).image, h, w, seed=seed)


def synthetic_truth(size: int | tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(instance labels uint32, contour bool) matching :func:`synthetic_he` of the same size/seed."""
    h, w = (size, size) if isinstance(size, int) else size
    pat = synthetic_pattern(seed)
    labels = tile_pattern(pat.labels, h, w, seed=seed, label_offsets=True, out_dtype=np.uint32)
    contour = tile_pattern(pat.contour, h, w, seed=seed)
    return labels, contour


def truth_probabilities(size: int | tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Foreground / contour probability maps (float32) that a well-trained model would give
    on :func:`synthetic_he`: used to time post-processing when only an untrained model exists
    (an untrained network's output makes post-processing time meaningless)."""
    labels, contour = synthetic_truth(size, seed)
    prob = np.where(labels > 0, np.float32(0.95), np.float32(0.05))
    del labels
    cont = np.where(contour, np.float32(0.95), np.float32(0.05))
    return prob, cont


# --------------------------------------------------------------------------- models


@dataclass
class BenchmarkModel:
    model: Any  # SegmentationModel
    trained: bool
    note: str


def load_benchmark_model(name: str = "nuclei") -> BenchmarkModel:
    """The built-in model if its weights exist (weights/<name>.safetensors), else an untrained
    Mini-Net with the same outputs (network speed does not depend on training)."""
    from napari_minenet.zoo import ModelCard, ModelLoadError, SegmentationModel, builtin_weights_dir, load_model

    weights = builtin_weights_dir() / f"{name}.safetensors"
    if weights.is_file():
        try:
            model = load_model(name)
            return BenchmarkModel(model, True, f"built-in weights '{name}' ({weights})")
        except ModelLoadError as exc:
            reason = f"built-in weights could not be loaded ({exc})"
    else:
        reason = f"no built-in weights at {weights}"
    import torch

    card = ModelCard(name=f"{name}-untrained", task="nuclei", out_channels=2, instances=True)
    torch.manual_seed(0)  # the same untrained weights in every process
    model = SegmentationModel.new(card)
    model.network.eval()
    return BenchmarkModel(model, False, f"UNTRAINED Mini-Net ({reason}); network speed does not depend on "
                                        "training, post-processing time does")


def reference_unet(out_channels: int = 2):
    """The reference U-Net (MONAI BasicUNet) with an otherwise default card."""
    import torch

    from napari_minenet.zoo import ModelCard, SegmentationModel

    card = ModelCard(name="unet", architecture={"name": "UNet"}, out_channels=out_channels)
    torch.manual_seed(0)
    model = SegmentationModel.new(card)
    model.network.eval()
    return model


def parameter_count(model) -> int:
    from napari_minenet.model import count_parameters

    return count_parameters(model.network)


def flops_per_pixel(network, in_channels: int = 3, size: int = 256) -> float | None:
    """Forward FLOPs per input pixel (torch.utils.flop_counter, eval mode, one size x size input)."""
    import copy

    import torch

    try:
        from torch.utils.flop_counter import FlopCounterMode

        net = copy.deepcopy(network).eval()
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            net(torch.zeros(1, in_channels, size, size))
        return counter.get_total_flops() / (size * size)
    except Exception:  # the counter is a convenience, never a reason to fail
        return None


# --------------------------------------------------------------------------- timing


def median_time(fn: Callable[[], Any], repeats: int = 3, warmup: int = 0) -> tuple[float, list[float], Any]:
    """(median seconds, all timings, result of the last call) of ``fn()``."""
    result = None
    for _ in range(max(0, warmup)):
        result = fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, result


def mpx_per_s(pixels: int, seconds: float) -> float:
    return pixels / MPX / seconds if seconds > 0 else float("nan")


def repeats_for(pixels: int, repeats: int, large_repeats: int, large_from: int = 2048 * 2048) -> int:
    """Fewer repeats for big images."""
    return large_repeats if pixels > large_from else repeats


# --------------------------------------------------------------------------- memory


def ru_maxrss_bytes() -> int:
    """``getrusage(RUSAGE_SELF).ru_maxrss`` in bytes (KiB on Linux, bytes on macOS).

    On Linux this value survives ``exec``: a child started by fork + exec from a big
    parent reports at least the parent's RSS at the fork, so it is only a fallback.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _proc_status(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process image: VmHWM from /proc/self/status (reset by
    exec, so a fresh child measures only itself), else ru_maxrss."""
    hwm = _proc_status("VmHWM")
    return hwm if hwm is not None else ru_maxrss_bytes()


def current_rss_bytes() -> int:
    rss = _proc_status("VmRSS")
    return rss if rss is not None else ru_maxrss_bytes()


def fmt_bytes(n: float | None) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB") else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _total_memory() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on (and how busy the machine was)."""
    import torch

    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_total": _total_memory(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        info["load_average"] = None
    try:
        from importlib.metadata import version

        info["napari_minenet"] = version("napari-minenet")
    except Exception:
        info["napari_minenet"] = "unknown"
    return info


def busy_warning(info: dict[str, Any]) -> str | None:
    """A warning when other work was running (1-min load average well above zero at start)."""
    load = info.get("load_average")
    cores = info.get("cpus_usable") or 1
    if load and load[0] > 0.5 * cores:
        return (f"WARNING: the machine was busy before this run (load average {load[0]} on {cores} cores): "
                "timings are noisy and pessimistic")
    return None


def print_machine(info: dict[str, Any]) -> None:
    gpu = info.get("gpu") or "none"
    print(f"machine: {info['cpu']}, {info['cpus_usable']} usable cores, torch {info['torch']} "
          f"({info['torch_threads']} threads), GPU: {gpu}, memory {fmt_bytes(info.get('memory_total'))}")
    warning = busy_warning(info)
    if warning:
        print(warning)


# --------------------------------------------------------------------------- tables


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in cells:
        out.append("  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(r, widths)))
    return "\n".join(out)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    print(f"\n{title}")
    print(format_table(headers, rows))


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}" if abs(v) >= 0.1 else f"{v:.3g}"
    return str(v)


def _numeric(s: str) -> bool:
    try:
        float(s.replace("x", "").replace(" ", ""))
        return True
    except ValueError:
        return False
