"""End-to-end segmentation throughput, time split, peak memory and the two references.

What is measured (one process, same machine state for every row):

* Mini-Net ``segment(image, model)``: RGB uint8 in, labels out (the product path and the
  target metric), in megapixels per second (median of N repeats);
* the split: ``predict_tiled`` alone (normalisation, AdaBN statistics, tiles, blending),
  within it ``prepare`` (Normalizer + AdaBN + BN folding), and post-processing
  (``labels_from_probability`` with the card's options) on the predicted maps;
* reference (a): the MONAI U-Net through the same ``predict_tiled`` path;
* reference (c): StarDist (the tool users would pick; TensorFlow CPU, the ``bench`` extra)
  with its 2D_versatile_he configuration and random weights (no download here): network
  alone (``predict``) and end to end (normalisation + ``predict_instances``), same tiles;
* reference (b): an ilastik-style random forest pixel classifier
  (``multiscale_basic_features`` + ``predict_segmenter``), trained on a 256 x 256 crop with
  sparse scribbles from the synthetic ground truth; timed features + prediction;
* on CUDA only: ``predict_tiled`` with fp32 / bf16 / fp16 and tile batches > 1
  (optionally ``torch.compile``);
* peak RSS of one ``segment`` call per size, each in a fresh child process
  (``--child-memory SIZE``) that does what a user's script does: imports the plugin, loads
  the model, reads the image from a ``.npy`` file (written by the parent, so the image
  generator's modules, cache and temporaries are not in the child) and segments it; the
  image is the one the speed rows use (the ``--mosaic`` of real tiles when given, else the
  synthetic one; before 2026-12-07 always the synthetic one).

Example::

    python benchmarks/throughput.py                              # full run (long)
    python benchmarks/throughput.py --sizes 512 1024 --repeats 1 # quick check
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
from common import fmt_bytes, median_time, mpx_per_s, print_table  # noqa: E402

CHILD_MARKER = "CHILD_RESULT "
TARGET_MPX_S = 3.0  # issue 13: end to end on 2 CPU cores at 2048^2
STRETCH_MPX_S = 5.0
TARGET_RSS = 1.2e9  # issue 13: 10,000^2
CORE_RSS = 2.5e9
TARGET_UNET_RATIO = 6.0  # issue 13
TARGET_NETWORK_SHARE = 0.70  # issue 13: end to end >= 70 % of the network-only throughput


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096, 10000],
                   help="square image sizes (pixels per side)")
    p.add_argument("--repeats", type=int, default=3, help="repeats per size up to 2048^2 (median reported)")
    p.add_argument("--large-repeats", type=int, default=1, help="repeats per size above 2048^2")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up calls per model before the first size")
    p.add_argument("--unet-max-size", type=int, default=4096, help="skip the U-Net above this size")
    p.add_argument("--unet-repeats", type=int, default=1, help="U-Net repeats per size")
    p.add_argument("--rf-max-size", type=int, default=2048,
                   help="skip the random forest above this size (its features take 288 bytes/pixel)")
    p.add_argument("--no-unet", action="store_true", help="skip reference (a)")
    p.add_argument("--no-rf", action="store_true", help="skip reference (b)")
    p.add_argument("--no-stardist", action="store_true", help="skip reference (c), StarDist")
    p.add_argument("--stardist-max-size", type=int, default=2048, help="skip StarDist above this size")
    p.add_argument("--stardist-model", help="a StarDist model folder trained by benchmarks/stardist_peer.py "
                                            "(default: its architecture with random weights)")
    p.add_argument("--memory-sizes", type=int, nargs="*", default=None,
                   help="sizes for the peak-RSS child processes (default: --sizes)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-RSS child processes")
    p.add_argument("--child-timeout", type=float, default=3600, help="seconds before a memory child is abandoned")
    p.add_argument("--tile-size", type=int, default=None, help="tile size (default: the model card's)")
    p.add_argument("--overlap", type=int, default=None, help="tile overlap (default: the model card's)")
    p.add_argument("--batch-size", type=int, default=1, help="tiles per batch for the main measurements")
    p.add_argument("--cuda-batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--cuda-precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    p.add_argument("--compile", action="store_true",
                   help="also time predict_tiled with the network wrapped in torch.compile (benchmark-only patch)")
    p.add_argument("--mosaic", default=None,
                   help="folder with images/*.png (e.g. ../shared/data/monuseg/train): every size is a mosaic of its "
                        "images (the nuclei model's validation ids left out) instead of the synthetic image")
    p.add_argument("--precision", default=None,
                   help="precision for segment / predict_tiled (default: segment's own, 'auto')")
    p.add_argument("--quality-max-size", type=int, default=2048,
                   help="pixel F1 against the synthetic truth up to this size (informative only)")
    p.add_argument("--child-memory", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--image-file", default=None, help=argparse.SUPPRESS)
    common.add_common_arguments(p)
    return p.parse_args(argv)


# --------------------------------------------------------------------------- memory child


class _RssSampler:
    """Samples the current RSS every 10 ms and keeps the maximum per phase (approximate;
    the exact overall peak comes from ru_maxrss)."""

    def __init__(self) -> None:
        self.phase = "predict"
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = common.current_rss_bytes()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)
            time.sleep(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def child_memory(size: int, args: argparse.Namespace) -> None:
    """Run in a fresh process: RSS after imports + model load, then the image read from
    ``args.image_file`` and one ``segment`` call."""
    import torch

    import napari_minenet.segmentation as segmentation

    common.configure_threads(args.threads)
    bm = common.load_benchmark_model()
    gc.collect()
    baseline = common.current_rss_bytes()
    image = np.load(args.image_file)
    if image.shape[:2] != (size, size):
        raise SystemExit(f"{args.image_file} is {image.shape}, not {size}^2")
    after_image = common.current_rss_bytes()

    sampler = _RssSampler()
    original = segmentation.labels_for

    def labels_for_with_phase(*a, **kw):  # benchmark-only: mark where post-processing starts
        sampler.phase = "postprocess"
        return original(*a, **kw)

    segmentation.labels_for = labels_for_with_phase
    # instance cards split band by band during the prediction (napari_minenet.bands): "postprocess" is then
    # what is left after the network (waiting for the last bands)
    import napari_minenet.bands as bands

    finish = bands.BandLabeller.finish

    def finish_with_phase(self):
        sampler.phase = "postprocess"
        return finish(self)

    bands.BandLabeller.finish = finish_with_phase
    t0 = time.perf_counter()
    with sampler:
        result = segmentation.segment(image, bm.model, device=args.device, tile_size=args.tile_size,
                                      overlap=args.overlap, batch_size=args.batch_size)
    seconds = time.perf_counter() - t0
    peak = common.peak_rss_bytes()
    out = {
        "size": size, "pixels": size * size, "trained": bm.trained, "seconds": seconds,
        "baseline_rss": baseline, "image_bytes": int(image.nbytes), "rss_after_image": after_image,
        "peak_rss": peak, "ru_maxrss": common.ru_maxrss_bytes(), "extra": peak - baseline, "extra_per_pixel": (peak - baseline) / (size * size),
        "peak_rss_predict_sampled": sampler.peaks.get("predict"),
        "peak_rss_postprocess_sampled": sampler.peaks.get("postprocess"),
        "objects": int(result.count),
    }
    if torch.cuda.is_available():
        out["gpu_peak_bytes"] = int(torch.cuda.max_memory_allocated())
    print(CHILD_MARKER + json.dumps(out), flush=True)


def measure_memory(sizes: list[int], args: argparse.Namespace, threads: int, card) -> list[dict]:
    """Peak RSS per size, on the image the speed rows use (the --mosaic of real tiles when
    given: real H&E holds fewer, larger objects than the synthetic image, and the peak differs)."""
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory(prefix="minenet-memory-") as tmp:
        for size in sizes:
            path = Path(tmp) / f"image_{size}.npy"
            np.save(path, image_for(size, args, card))
            try:
                rows.append(_memory_child(size, path, args, threads))
            finally:
                path.unlink()
    return rows


def _memory_child(size: int, path: Path, args: argparse.Namespace, threads: int) -> dict:
    """One fresh process: peak RSS of ``segment`` on the image in ``path`` (a row, or an error row)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-memory", str(size), "--image-file", str(path),
           "--device", args.device, "--threads", str(threads), "--batch-size", str(args.batch_size)]
    if args.tile_size:
        cmd += ["--tile-size", str(args.tile_size)]
    if args.overlap is not None:
        cmd += ["--overlap", str(args.overlap)]
    print(f"  memory child {size}^2 ...", flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.child_timeout)
    except subprocess.TimeoutExpired:
        return {"size": size, "error": f"timed out after {args.child_timeout:.0f} s"}
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(CHILD_MARKER)), None)
    if proc.returncode != 0 or line is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"size": size, "error": f"child failed (rc {proc.returncode}): {' | '.join(tail)}"}
    return json.loads(line[len(CHILD_MARKER):])


# --------------------------------------------------------------------------- Mini-Net and U-Net


def measure_minenet(image, model, args, repeats, device, truth_maps=None) -> dict:
    import napari_minenet.inference as inference
    from napari_minenet.data import Normalizer, as_rgb_or_grey, check_image
    from napari_minenet.inference import predict_tiled, prepare_network, select_device
    from napari_minenet.segmentation import labels_for, segment

    card = model.card
    pixels = image.shape[0] * image.shape[1]
    kw = dict(device=device, tile_size=args.tile_size, overlap=args.overlap, batch_size=args.batch_size)
    if args.precision:
        kw["precision"] = args.precision
    seg_s, seg_all, result = median_time(lambda: segment(image, model, **kw), repeats)
    objects = int(result.count)
    foreground = float(np.count_nonzero(result.labels)) / pixels
    del result
    gc.collect()
    pred_s, _, probs = median_time(lambda: predict_tiled(image, model, **kw), repeats)

    dev = select_device(device)

    def prepare():
        work = as_rgb_or_grey(check_image(image), card.in_channels)
        normalizer = Normalizer.for_image(work, card.normalization, card.in_channels)
        return prepare_network(model, work, normalizer, dev,
                               precision=inference.resolve_precision(dev, kw.get("precision", "auto")))

    prep_s, _, _ = median_time(prepare, repeats)
    # the network alone: the prepared network on the image's tiles (same tiles, precision and blending as
    # predict_tiled, without normalisation statistics, AdaBN or post-processing)
    work = as_rgb_or_grey(check_image(image), card.in_channels)
    normalizer = Normalizer.for_image(work, card.normalization, card.in_channels)
    precision = inference.resolve_precision(dev, kw.get("precision", "auto"))
    net = inference.prepare_network(model, work, normalizer, dev, precision=precision)
    tile = card.tile_size if args.tile_size is None else args.tile_size
    ov = min(card.tile_overlap if args.overlap is None else args.overlap, tile // 2)
    net_s, _, _ = median_time(lambda: inference._predict_tiles(work, model, dev, tile, ov, args.batch_size, precision,
                                                               None, None, prepared=(net, normalizer)), repeats)
    del net, work
    contour = probs[1] if card.has_contours else None

    def post():
        return labels_for(probs[0], contour, card, card.default_threshold, card.instances, card.min_size)

    post_s, _, _ = median_time(post, repeats)
    row = {
        "segment_s": seg_s, "segment_all_s": seg_all, "segment_mpx_s": mpx_per_s(pixels, seg_s),
        "predict_s": pred_s, "predict_mpx_s": mpx_per_s(pixels, pred_s), "prepare_s": prep_s,
        "precision": precision, "network_s": net_s, "network_mpx_s": mpx_per_s(pixels, net_s),
        "share_of_network": net_s / seg_s,
        "postprocess_s": post_s, "other_s": seg_s - pred_s - post_s, "objects": objects,
        "foreground_fraction": foreground,
    }
    if truth_maps is not None:
        prob_t, cont_t = truth_maps
        t_s, _, labels = median_time(
            lambda: labels_for(prob_t, cont_t if card.has_contours else None, card, card.default_threshold,
                               card.instances, card.min_size), repeats)
        row["postprocess_truth_s"] = t_s
        row["objects_truth"] = int(labels.max())
        row["segment_truth_est_s"] = pred_s + t_s
        row["segment_truth_est_mpx_s"] = mpx_per_s(pixels, pred_s + t_s)
    row["_probs"] = probs
    return row


def measure_unet(image, unet, args, device) -> dict:
    from napari_minenet.inference import predict_tiled

    pixels = image.shape[0] * image.shape[1]
    s, _, _ = median_time(lambda: predict_tiled(image, unet, device=device, tile_size=args.tile_size,
                                                overlap=args.overlap, batch_size=args.batch_size),
                          args.unet_repeats)
    return {"predict_s": s, "predict_mpx_s": mpx_per_s(pixels, s), "repeats": args.unet_repeats}


# --------------------------------------------------------------------------- StarDist


#: StarDist's 2D_versatile_he configuration (its published model: 32 rays, grid 2 x 2, a depth-3 U-Net
#: with 32 base filters, RGB input); weights are random here unless --stardist-model is given
STARDIST_CONFIG = dict(n_rays=32, grid=(2, 2), n_channel_in=3)


def load_stardist(threads: int, folder: str | None = None):
    """(model, note, parameters) or (None, reason, None): StarDist2D with the 2D_versatile_he
    configuration, trained weights from ``folder`` (what ``benchmarks/stardist_peer.py train``
    wrote) or random weights (no download is possible here); TensorFlow limited to ``threads``."""
    try:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        from stardist.models import Config2D, StarDist2D
    except Exception as exc:  # the bench extra is not installed
        return None, f"StarDist unavailable ({type(exc).__name__}: {exc}); pip install 'napari-minenet[bench]'", None
    import stardist

    if folder:
        path = Path(folder)
        model = StarDist2D(None, name=path.name, basedir=str(path.parent))
        params = int(model.keras_model.count_params())
        return model, (f"StarDist {stardist.__version__} (TensorFlow {tf.__version__}, {threads} threads), "
                       f"2D_versatile_he configuration ({params:,} parameters) TRAINED here from scratch on the "
                       f"nuclei model's 24 MoNuSeg training images ({folder}; benchmarks/stardist_peer.py), its "
                       f"tuned thresholds (prob {model.thresholds.prob:.3f}, nms {model.thresholds.nms:.2f})"), params
    tf.keras.utils.set_random_seed(0)
    model = StarDist2D(Config2D(**STARDIST_CONFIG), name="versatile_he_random", basedir=None)
    params = int(model.keras_model.count_params())
    return model, (f"StarDist {stardist.__version__} (TensorFlow {tf.__version__}, {threads} threads), "
                   f"2D_versatile_he configuration ({params:,} parameters) with RANDOM weights: network timings are "
                   "real, its NMS runs on random-weight candidates (indicative only)"), params


def measure_stardist(image, model, repeats: int, tile: int = 1024, foreground: float = 0.25,
                     trained: bool = False) -> dict:
    """Network alone (``model.predict``: probabilities and ray distances over tiles) and end to
    end (percentile normalisation + ``predict_instances``), the way a StarDist user runs it.

    Random weights give a probability near 0.5 everywhere, so the default threshold would send
    most grid points to the NMS (tens of thousands of candidates per Mpx, nothing like a trained
    model). The threshold is set instead so that the fraction of candidate points equals
    ``foreground``, the fraction of the image Mini-Net labels as nuclei: the NMS then sees as
    many candidates as a trained model would (placed at random: indicative only). A ``trained``
    model runs with its own tuned thresholds."""
    from csbdeep.utils import normalize

    pixels = image.shape[0] * image.shape[1]
    n_tiles = (max(1, round(image.shape[0] / tile)), max(1, round(image.shape[1] / tile)), 1)
    x = normalize(image, 1, 99.8, axis=(0, 1, 2))
    net_s, _, (prob, _) = median_time(lambda: model.predict(x, n_tiles=n_tiles, show_tile_progress=False), repeats,
                                      warmup=1)
    prob_thresh = float(model.thresholds.prob) if trained else float(np.quantile(prob, 1.0 - foreground))
    nms_thresh = float(model.thresholds.nms) if trained else 0.4

    def end_to_end():
        xn = normalize(image, 1, 99.8, axis=(0, 1, 2))
        return model.predict_instances(xn, n_tiles=n_tiles, show_tile_progress=False, prob_thresh=prob_thresh,
                                       nms_thresh=nms_thresh)[0]

    e2e_s, _, labels = median_time(end_to_end, repeats)
    return {"network_s": net_s, "network_mpx_s": mpx_per_s(pixels, net_s), "segment_s": e2e_s,
            "segment_mpx_s": mpx_per_s(pixels, e2e_s), "objects": int(labels.max()), "n_tiles": list(n_tiles),
            "prob_thresh": prob_thresh, "nms_thresh": nms_thresh, "trained": trained,
            "candidate_fraction": None if trained else foreground}


# --------------------------------------------------------------------------- random forest


def scribbles(labels: np.ndarray, contour: np.ndarray, spacing: int = 12) -> np.ndarray:
    """Sparse training labels (1 background, 2 nucleus, 0 unlabelled): pixels on a grid of
    lines, far from object borders."""
    from scipy import ndimage as ndi

    fg = labels > 0
    core = ndi.binary_erosion(fg & ~contour, iterations=1)
    far_bg = ~ndi.binary_dilation(fg, iterations=3)
    yy, xx = np.mgrid[: labels.shape[0], : labels.shape[1]]
    lines = (yy % spacing == 0) | (xx % spacing == 0)
    out = np.zeros(labels.shape, np.uint8)
    out[lines & far_bg] = 1
    out[lines & core] = 2
    return out


def train_random_forest(threads: int) -> tuple[object, dict]:
    from skimage.feature import multiscale_basic_features
    from skimage.future import fit_segmenter
    from sklearn.ensemble import RandomForestClassifier

    image = common.synthetic_he(1024, seed=1)[384:640, 384:640]
    labels, contour = common.synthetic_truth(1024, seed=1)
    train = scribbles(labels[384:640, 384:640], contour[384:640, 384:640])
    clf = RandomForestClassifier(n_estimators=50, max_depth=10, n_jobs=-1, random_state=0)
    t0 = time.perf_counter()
    features = multiscale_basic_features(image, channel_axis=-1)
    clf = fit_segmenter(train, features, clf)
    seconds = time.perf_counter() - t0
    return clf, {"train_s": seconds, "crop": "256x256 (synthetic, seed 1)", "labelled_pixels": int((train > 0).sum()),
                 "features": int(features.shape[-1]), "n_estimators": 50, "max_depth": 10}


def measure_rf(image, clf, repeats) -> dict:
    from skimage.feature import multiscale_basic_features
    from skimage.future import predict_segmenter

    pixels = image.shape[0] * image.shape[1]
    timings = {}

    def run():
        t0 = time.perf_counter()
        features = multiscale_basic_features(image, channel_axis=-1)
        t1 = time.perf_counter()
        pred = predict_segmenter(features, clf)
        t2 = time.perf_counter()
        timings.setdefault("features", []).append(t1 - t0)
        timings.setdefault("predict", []).append(t2 - t1)
        return pred

    s, _, pred = median_time(run, repeats)
    return {"total_s": s, "mpx_s": mpx_per_s(pixels, s), "features_s": float(np.median(timings["features"])),
            "classify_s": float(np.median(timings["predict"])), "_pred": pred}


def pixel_f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = np.count_nonzero(pred & truth)
    fp = np.count_nonzero(pred & ~truth)
    fn = np.count_nonzero(~pred & truth)
    return 2 * tp / max(1, 2 * tp + fp + fn)


# --------------------------------------------------------------------------- CUDA


def measure_cuda(sizes, model, args) -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device (torch.cuda.is_available() is False): fp32/bf16/fp16 and batched "
                           "tiles not measured"}
    from napari_minenet.inference import predict_tiled

    rows = []
    name = torch.cuda.get_device_name(0)
    for size in sizes:
        image = common.synthetic_he(size)
        pixels = size * size
        reps = common.repeats_for(pixels, args.repeats, args.large_repeats)
        for precision in args.cuda_precisions:
            if precision == "bf16" and not torch.cuda.is_bf16_supported():
                rows.append({"size": size, "precision": precision, "skipped": "bf16 not supported on this GPU"})
                continue
            for bs in args.cuda_batch_sizes:
                row = {"size": size, "precision": precision, "batch_size": bs, "compile": False}
                try:
                    torch.cuda.reset_peak_memory_stats()
                    fn = lambda: predict_tiled(image, model, device="cuda", tile_size=args.tile_size,  # noqa: E731
                                               overlap=args.overlap, batch_size=bs, precision=precision)
                    s, _, _ = median_time(fn, reps, warmup=1)
                    row.update(predict_s=s, mpx_s=mpx_per_s(pixels, s),
                               gpu_peak_bytes=int(torch.cuda.max_memory_allocated()))
                except Exception as exc:  # report and go on: one failing configuration is a result
                    row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                rows.append(row)
        del image
        gc.collect()
    return {"device": name, "rows": rows}


def measure_compiled(sizes, model, args, device) -> list[dict]:
    """predict_tiled with ``torch.compile`` around the prepared network (benchmark-only patch of
    ``inference.prepare_network``; the product does not compile)."""
    import torch

    import napari_minenet.inference as inference

    original = inference.ready_network  # what predict_tiled's tiles run through

    def compiled_ready(*a, **kw):
        return torch.compile(original(*a, **kw), dynamic=False)

    rows = []
    inference.ready_network = compiled_ready
    try:
        for size in sizes:
            image = common.synthetic_he(size)
            pixels = size * size
            reps = common.repeats_for(pixels, args.repeats, args.large_repeats)
            row = {"size": size, "device": str(device), "compile": True}
            try:
                t0 = time.perf_counter()
                inference.predict_tiled(image, model, device=device, tile_size=args.tile_size, overlap=args.overlap)
                row["first_call_s"] = time.perf_counter() - t0
                s, _, _ = median_time(lambda: inference.predict_tiled(
                    image, model, device=device, tile_size=args.tile_size, overlap=args.overlap), reps)
                row.update(predict_s=s, mpx_s=mpx_per_s(pixels, s))
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            rows.append(row)
    finally:
        inference.ready_network = original
    return rows


# --------------------------------------------------------------------------- targets


def image_for(size: int, args: argparse.Namespace, card) -> np.ndarray:
    """The benchmark image: a mosaic of real images with --mosaic, else the synthetic one."""
    if not args.mosaic:
        return common.synthetic_he(size)
    from cpu_paths import mosaic_image

    return mosaic_image(args.mosaic, size, card.metrics.get("validation", {}).get("ids", []))[0]


def evaluate_targets(rows: list[dict], memory: list[dict]) -> list[dict]:
    targets = []
    by_size = {r["size"]: r for r in rows}
    r2048 = by_size.get(2048)
    name = f"segment end to end at 2048^2 >= {TARGET_MPX_S:g} Mpx/s (stretch {STRETCH_MPX_S:g})"
    if r2048:
        v = r2048["segment_mpx_s"]
        targets.append({"target": name, "measured": f"{v:.2f} Mpx/s",
                        "met": v >= TARGET_MPX_S, "stretch_met": v >= STRETCH_MPX_S})
        share = r2048["share_of_network"]
        targets.append({"target": f"end to end >= {TARGET_NETWORK_SHARE:.0%} of the network-only throughput (2048^2)",
                        "measured": f"{share:.0%} ({v:.2f} of {r2048['network_mpx_s']:.2f} Mpx/s)",
                        "met": share >= TARGET_NETWORK_SHARE})
    else:
        targets.append({"target": name, "measured": "not measured", "met": None})
    ok_mem = [m for m in memory if "peak_rss" in m]
    m10k = next((m for m in ok_mem if m["size"] == 10000), None)
    if m10k:
        peak = m10k["peak_rss"]
        measured, extrapolated = f"{peak / 1e9:.2f} GB", False
    elif ok_mem:
        peak, basis = extrapolate_peak(ok_mem, 10000 * 10000)
        if peak is None:
            measured, extrapolated = f"not measured (10000^2 not run; extrapolation {basis})", False
        else:
            measured, extrapolated = f"~{peak / 1e9:.2f} GB (extrapolated {basis})", True
    else:
        peak, measured, extrapolated = None, "not measured", False
    targets.append({"target": f"peak RSS of segment on 10000^2 RGB <= {TARGET_RSS / 1e9:g} GB", "measured": measured,
                    "met": None if peak is None else peak <= TARGET_RSS, "extrapolated": extrapolated})
    targets.append({"target": "peak RSS of segment on 10000^2 RGB < 2.5 GB (core issue)", "measured": measured,
                    "met": None if peak is None else peak < CORE_RSS, "extrapolated": extrapolated})
    if r2048 and r2048.get("ratio_stardist") and r2048["stardist"].get("trained"):
        v = r2048["ratio_stardist"]  # a trained StarDist: its end to end is real
        targets.append({"target": ">= 2x StarDist's end to end throughput (same run, 2048^2)",
                        "measured": f"{v:.2f}x (Mini-Net {r2048['segment_mpx_s']:.2f} Mpx/s end to end; trained StarDist "
                                    f"{r2048['stardist']['segment_mpx_s']:.2f}, {r2048['stardist']['objects']} objects)",
                        "met": v >= 2.0})
    elif r2048 and r2048.get("ratio_stardist_bound"):
        v = r2048["ratio_stardist_bound"]
        targets.append({"target": ">= 2x StarDist's end to end throughput (same run, 2048^2)",
                        "measured": f">= {v:.2f}x (Mini-Net {r2048['segment_mpx_s']:.2f} Mpx/s end to end; StarDist "
                                    f"<= {r2048['stardist']['network_mpx_s']:.2f}, its network alone)",
                        "met": v >= 2.0})
    else:
        targets.append({"target": ">= 2x StarDist's end to end throughput (same run, 2048^2)",
                        "measured": "not measured", "met": None})
    with_unet = [r for r in rows if r.get("ratio_unet")]
    if with_unet:
        ref = by_size.get(2048) if by_size.get(2048, {}).get("ratio_unet") else max(with_unet, key=lambda r: r["size"])
        v = ref["ratio_unet"]
        targets.append({"target": f">= {TARGET_UNET_RATIO:g}x the U-Net's throughput (same run)",
                        "measured": f"{v:.1f}x at {ref['size']}^2", "met": v >= TARGET_UNET_RATIO})
    else:
        targets.append({"target": f">= {TARGET_UNET_RATIO:g}x the U-Net's throughput (same run)",
                        "measured": "not measured", "met": None})
    return targets


#: below this size the AdaBN sample is the whole image and there is one tile, so memory does not
#: yet grow linearly with the pixel count: such sizes are not used to extrapolate
EXTRAPOLATE_FROM = 2048


def extrapolate_peak(memory: list[dict], pixels: int) -> tuple[float | None, str]:
    """Peak RSS at ``pixels``, linear in the pixel count through the two largest measured sizes
    >= EXTRAPOLATE_FROM^2 (the fixed part, AdaBN sample and one tile's activations, cancels out)."""
    ms = sorted((m for m in memory if m["size"] >= EXTRAPOLATE_FROM), key=lambda m: m["pixels"])
    if len(ms) < 2 or ms[-1]["pixels"] <= ms[-2]["pixels"]:
        return None, f"needs two sizes >= {EXTRAPOLATE_FROM}^2"
    a, b = ms[-2], ms[-1]
    slope = max(0.0, (b["peak_rss"] - a["peak_rss"]) / (b["pixels"] - a["pixels"]))
    return b["peak_rss"] + slope * (pixels - b["pixels"]), f"from {a['size']}^2 and {b['size']}^2: {slope:.1f} B/px"


def _met(v) -> str:
    return "not measured" if v is None else ("met" if v else "MISSED")


# --------------------------------------------------------------------------- main


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    threads = common.configure_threads(args.threads)
    if args.child_memory is not None:
        child_memory(args.child_memory, args)
        return None

    from napari_minenet.inference import select_device

    device = select_device(args.device)
    info = common.machine_info()
    what = f"a mosaic of real images from {args.mosaic}" if args.mosaic else "synthetic H&E-like RGB uint8 images"
    print(f"Throughput of image-in, labels-out segmentation ({what})")
    common.print_machine(info)
    bm = common.load_benchmark_model()
    model = bm.model
    print(f"model: {bm.note}")
    card = model.card
    print(f"device: {device}; tile {args.tile_size or card.tile_size} px, overlap "
          f"{card.tile_overlap if args.overlap is None else args.overlap} px, batch {args.batch_size}; "
          f"bn_statistics={card.bn_statistics}")
    mini_params = common.parameter_count(model)
    unet = None
    unet_params = None
    if not args.no_unet:
        try:
            unet = common.reference_unet(card.out_channels)
            unet_params = common.parameter_count(unet)
        except Exception as exc:  # MONAI missing
            print(f"reference U-Net unavailable: {exc}")
    print(f"parameters: Mini-Net {mini_params:,}" + (f", U-Net {unet_params:,} ({unet_params / mini_params:.0f}x)"
                                                     if unet_params else ""))
    mini_flops = common.flops_per_pixel(model.network, card.in_channels)
    unet_flops = common.flops_per_pixel(unet.network, card.in_channels) if unet is not None else None
    if mini_flops:
        print(f"forward FLOPs per pixel: Mini-Net {mini_flops:,.0f}" + (
            f", U-Net {unet_flops:,.0f} ({unet_flops / mini_flops:.0f}x)" if unet_flops else ""))

    sd_model, sd_note, sd_params = (None, "disabled (--no-stardist)", None) if args.no_stardist else \
        load_stardist(threads, args.stardist_model)
    print(f"StarDist: {sd_note}")
    clf, rf_training = None, None
    if not args.no_rf:
        try:
            clf, rf_training = train_random_forest(threads)
            print(f"random forest: trained in {rf_training['train_s']:.2f} s on a {rf_training['crop']} crop, "
                  f"{rf_training['labelled_pixels']} scribble pixels, {rf_training['features']} features")
        except Exception as exc:
            print(f"random forest unavailable: {exc}")
            rf_training = {"error": str(exc)}

    # warm-up (untimed): oneDNN primitives for the tile shape and the smallest size
    from napari_minenet.inference import predict_tiled
    from napari_minenet.segmentation import segment

    tile = args.tile_size or card.tile_size
    warm_sizes = sorted({min(args.sizes), min(max(args.sizes), tile)})
    for _ in range(args.warmup):
        for s in warm_sizes:
            segment(common.synthetic_he(s), model, device=device, tile_size=args.tile_size, overlap=args.overlap)
            if unet is not None and s <= args.unet_max_size:
                predict_tiled(common.synthetic_he(min(s, 512)), unet, device=device, tile_size=args.tile_size)

    rows = []
    for size in args.sizes:
        pixels = size * size
        reps = common.repeats_for(pixels, args.repeats, args.large_repeats)
        print(f"  {size}^2: {reps} repeat(s) ...", flush=True)
        image = image_for(size, args, card)
        truth_maps = None if bm.trained or args.mosaic else common.truth_probabilities(size)
        row = {"size": size, "pixels": pixels, "repeats": reps}
        m = measure_minenet(image, model, args, reps, device, truth_maps)
        probs = m.pop("_probs")
        row.update(m)
        del truth_maps
        quality = size <= args.quality_max_size and not args.mosaic  # (the truth is the synthetic image's)
        truth_fg = (common.synthetic_truth(size)[0] > 0) if quality else None
        if quality and bm.trained:
            row["f1_synthetic"] = pixel_f1(probs[0] > card.default_threshold, truth_fg)
        del probs
        gc.collect()
        if unet is None:
            row["unet"] = {"skipped": "disabled (--no-unet)" if args.no_unet else "U-Net unavailable"}
        elif size > args.unet_max_size:
            row["unet"] = {"skipped": f"size > --unet-max-size {args.unet_max_size}"}
        else:
            row["unet"] = measure_unet(image, unet, args, device)
            row["ratio_unet"] = row["predict_mpx_s"] / row["unet"]["predict_mpx_s"]
        if sd_model is None:
            row["stardist"] = {"skipped": sd_note}
        elif size > args.stardist_max_size:
            row["stardist"] = {"skipped": f"size > --stardist-max-size {args.stardist_max_size}"}
        else:
            try:
                row["stardist"] = measure_stardist(image, sd_model, reps, args.tile_size or card.tile_size,
                                                   foreground=m["foreground_fraction"],
                                                   trained=bool(args.stardist_model))
                row["ratio_stardist"] = row["segment_mpx_s"] / row["stardist"]["segment_mpx_s"]
                row["ratio_stardist_network"] = row["network_mpx_s"] / row["stardist"]["network_mpx_s"]
                # StarDist end to end can be no faster than its network alone: a bound that random weights
                # cannot distort (its NMS on random candidates can)
                row["ratio_stardist_bound"] = row["segment_mpx_s"] / row["stardist"]["network_mpx_s"]
            except Exception as exc:  # one failing reference is a result, not a reason to stop
                row["stardist"] = {"skipped": f"failed: {type(exc).__name__}: {exc}"[:300]}
        if clf is None:
            row["rf"] = {"skipped": "disabled (--no-rf)" if args.no_rf else "random forest unavailable"}
        elif size > args.rf_max_size:
            row["rf"] = {"skipped": f"size > --rf-max-size {args.rf_max_size} (features: "
                                    f"{fmt_bytes(pixels * rf_training['features'] * 4)})"}
        else:
            rf = measure_rf(image, clf, reps)
            pred = rf.pop("_pred")
            if quality:
                rf["f1_synthetic"] = pixel_f1(pred == 2, truth_fg)
            row["rf"] = rf
            row["ratio_rf"] = row["segment_mpx_s"] / rf["mpx_s"]
        del image, truth_fg
        gc.collect()
        rows.append(row)

    cuda = measure_cuda(args.sizes, model, args)  # skips itself without CUDA
    compiled = measure_compiled(args.sizes, model, args, device) if args.compile else []

    memory = []
    if not args.no_memory:
        sizes = args.memory_sizes if args.memory_sizes is not None else args.sizes
        print(f"peak memory: one fresh child process per size ({', '.join(map(str, sizes))})", flush=True)
        memory = measure_memory(sizes, args, threads, card)

    # ------------------------------------------------------------------ report
    print_table(
        "Mini-Net segment() end to end (image in, labels out) and its split; seconds are medians",
        ["size", "reps", "precision", "segment s", "Mpx/s", "predict_tiled s", "of which prepare s",
         "network alone s", "network Mpx/s", "end to end / network", "postprocess s", "other s", "objects"],
        [[f"{r['size']}^2", r["repeats"], r["precision"], r["segment_s"], r["segment_mpx_s"], r["predict_s"],
          r["prepare_s"], r["network_s"], r["network_mpx_s"], f"{r['share_of_network']:.0%}", r["postprocess_s"],
          r["other_s"], r["objects"]] for r in rows])
    if not bm.trained:
        print_table(
            "post-processing on ground-truth-like maps (untrained model: its own output is not representative)",
            ["size", "postprocess s", "objects", "segment estimate s", "estimate Mpx/s"],
            [[f"{r['size']}^2", r["postprocess_truth_s"], r["objects_truth"], r["segment_truth_est_s"],
              r["segment_truth_est_mpx_s"]] for r in rows])

    def ref_cells(r, key, speed_key):
        ref = r[key]
        return ("skipped (" + ref["skipped"] + ")", None) if "skipped" in ref else (ref[speed_key], None)

    print_table(
        "references, same run: Mini-Net/U-Net compares predict_tiled with predict_tiled; "
        "Mini-Net/RF compares segment() with RF features+predict",
        ["size", "Mini-Net predict Mpx/s", "U-Net predict Mpx/s", "Mini-Net/U-Net", "Mini-Net segment Mpx/s",
         "RF Mpx/s", "Mini-Net/RF"],
        [[f"{r['size']}^2", r["predict_mpx_s"], ref_cells(r, "unet", "predict_mpx_s")[0],
          f"{r['ratio_unet']:.1f}x" if r.get("ratio_unet") else "-", r["segment_mpx_s"],
          ref_cells(r, "rf", "mpx_s")[0], f"{r['ratio_rf']:.1f}x" if r.get("ratio_rf") else "-"] for r in rows])
    print_table(
        "StarDist, same run, same images (" + sd_note + ")",
        ["size", "Mini-Net network Mpx/s", "StarDist network Mpx/s", "Mini-Net segment Mpx/s",
         "StarDist predict_instances Mpx/s", "Mini-Net segment / StarDist network (bound)",
         "Mini-Net/StarDist end to end", "StarDist weights", "StarDist objects"],
        [[f"{r['size']}^2", r["network_mpx_s"], r["stardist"].get("network_mpx_s", r["stardist"].get("skipped")),
          r["segment_mpx_s"], r["stardist"].get("segment_mpx_s"),
          f"{r['ratio_stardist_bound']:.2f}x" if r.get("ratio_stardist_bound") else "-",
          f"{r['ratio_stardist']:.2f}x" if r.get("ratio_stardist") else "-",
          "trained" if r["stardist"].get("trained") else "random (end to end indicative only)",
          r["stardist"].get("objects")]
         for r in rows])
    rf_rows = [r for r in rows if "total_s" in r["rf"]]
    if rf_rows:
        print_table("random forest split (seconds, median)", ["size", "features s", "classify s", "total s"],
                    [[f"{r['size']}^2", r["rf"]["features_s"], r["rf"]["classify_s"], r["rf"]["total_s"]]
                     for r in rf_rows])
    quality_rows = [r for r in rows if "f1_synthetic" in r or "f1_synthetic" in r["rf"]]
    if quality_rows:
        print_table("pixel F1 against the synthetic truth (informative only: the synthetic image is not real H&E)",
                    ["size", "Mini-Net F1", "RF F1"],
                    [[f"{r['size']}^2", r.get("f1_synthetic"), r["rf"].get("f1_synthetic")] for r in quality_rows])
    if "skipped" in cuda:
        print(f"\nCUDA: skipped ({cuda['skipped']})")
    else:
        print_table(f"CUDA predict_tiled on {cuda['device']} (median, 1 warm-up)",
                    ["size", "precision", "batch", "s", "Mpx/s", "GPU peak", "note"],
                    [[f"{r['size']}^2", r["precision"], r.get("batch_size"), r.get("predict_s"), r.get("mpx_s"),
                      fmt_bytes(r.get("gpu_peak_bytes")), r.get("error") or r.get("skipped") or ""]
                     for r in cuda["rows"]])
    if compiled:
        print_table("predict_tiled with torch.compile (benchmark-only patch)",
                    ["size", "device", "first call s", "median s", "Mpx/s", "note"],
                    [[f"{r['size']}^2", r["device"], r.get("first_call_s"), r.get("predict_s"), r.get("mpx_s"),
                      r.get("error", "")] for r in compiled])
    elif not args.compile:
        print("\ntorch.compile: not measured (pass --compile)")
    if memory:
        print_table(
            "peak RSS of one segment() call, fresh process per size (baseline = after imports and model load; "
            "extra = peak - baseline; phase peaks sampled every 10 ms)",
            ["size", "peak RSS", "baseline", "image", "extra", "extra B/px", "peak in predict", "peak in postprocess",
             "seconds", "note"],
            [[f"{m['size']}^2", fmt_bytes(m.get("peak_rss")), fmt_bytes(m.get("baseline_rss")),
              fmt_bytes(m.get("image_bytes")), fmt_bytes(m.get("extra")), m.get("extra_per_pixel"),
              fmt_bytes(m.get("peak_rss_predict_sampled")), fmt_bytes(m.get("peak_rss_postprocess_sampled")),
              m.get("seconds"), m.get("error", "")] for m in memory])
    if memory and not bm.trained:
        print("NOTE: with an untrained model, post-processing sees speckle (many tiny objects), so its memory and "
              "time are not representative of a trained model's output")
    targets = evaluate_targets(rows, memory)
    print_table("targets", ["target", "measured", "result"],
                [[t["target"], t["measured"], _met(t["met"]) + (" (stretch met)" if t.get("stretch_met") else "")]
                 for t in targets])

    data = {
        "script": "throughput",
        "measured": "napari_minenet.segmentation.segment on the image below (speed rows and memory children); "
                    "predict_tiled and labels_from_probability separately; references in the same run",
        "machine": info,
        "busy_warning": common.busy_warning(info),
        "device": str(device),
        "image": ("mosaic of real images from " + args.mosaic + " (validation ids left out)") if args.mosaic
                 else "synthetic H&E (benchmarks/common.py)",
        "model": {"name": card.name, "trained": bm.trained, "note": bm.note, "parameters": mini_params,
                  "tile_size": args.tile_size or card.tile_size,
                  "overlap": card.tile_overlap if args.overlap is None else args.overlap,
                  "batch_size": args.batch_size},
        "unet": {"parameters": unet_params, "max_size": args.unet_max_size, "flops_per_pixel": unet_flops},
        "stardist": {"note": sd_note, "parameters": sd_params, "config": STARDIST_CONFIG, "weights": args.stardist_model or "random",
                     "max_size": args.stardist_max_size},
        "flops_per_pixel": {"minenet": mini_flops, "unet": unet_flops},
        "rf": {"training": rf_training, "max_size": args.rf_max_size},
        "sizes": rows,
        "cuda": cuda,
        "compiled": compiled,
        "memory": memory,
        "targets": targets,
        "load_average_end": list(os.getloadavg()),
    }
    common.write_json(args.json, data)
    return data


if __name__ == "__main__":
    main()
