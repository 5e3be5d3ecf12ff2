"""Which CPU inference path is fastest? Every variant in ONE run, interleaved, medians.

What is measured on one image (a mosaic of real H&E tiles with ``--mosaic DIR``, e.g. the
MoNuSeg training images, else the synthetic H&E image), the nuclei model, this machine:

* ``prepare``: Normalizer + AdaBN statistics on ``--sample-pixels`` pixels (each value
  in turn) + BN folding, as ``predict_tiled`` does it;
* the network on tiles, the product loop (``_predict_tiles`` with the network prepared
  once, so only tiles + blending are timed) for every combination of precision (fp32,
  bf16 autocast), memory format (channels_last, contiguous) and tile size, and at 1024 px
  the network with BN folded but its branches not merged (the graph before
  ``inference_graph``, 2026-12-08);
* ONNX Runtime (CPU) on the same BN-folded network, whole image and 1024 px tiles;
* ``torch.compile`` of the folded network (``--compile``; its first call is reported);
* end to end ``segment()`` with the default precision and with ``precision="fp32"``.

Variants are timed round-robin (one call of each per round), so a busy machine slows
them alike; the load average before and after is printed with the numbers.

Example::

    python benchmarks/cpu_paths.py --mosaic ../shared/data/monuseg/train --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
from common import mpx_per_s, print_table  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=2048, help="square image size")
    p.add_argument("--mosaic", default=None,
                   help="folder with images/*.png: build the image from its first tiles (real data) instead of the "
                        "synthetic one")
    p.add_argument("--exclude", nargs="*", default=None,
                   help="image ids not to use in the mosaic (default: the nuclei model's validation ids)")
    p.add_argument("--repeats", type=int, default=5, help="rounds (median reported)")
    p.add_argument("--tile-sizes", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--sample-pixels", type=int, nargs="+", default=[1 << 20, 1 << 19, 1 << 18, 1 << 17])
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow first call)")
    p.add_argument("--no-onnx", action="store_true")
    p.add_argument("--int8", action="store_true",
                   help="also time int8 (PyTorch FX static quantisation, x86 backend, calibrated on 4 tiles)")
    common.add_common_arguments(p, device=False)
    return p.parse_args(argv)


def mosaic_image(folder: str, size: int, exclude: list[str]) -> tuple[np.ndarray, list[str]]:
    """``size``^2 RGB uint8 from the images of ``folder`` (sorted, minus ``exclude``), laid
    out row by row, starting again from the first image when they run out (a 10,000^2 mosaic
    of 1000 px tiles uses each of 24 images four times). Until 2026-12-07 the remainder was
    zeros filled in by reflection: black rectangles the nuclei model calls foreground, which
    no H&E image has (its 10,000^2 peak memory and time measured those, not tissue)."""
    from napari_minenet.data import read_image

    names = sorted(p for p in (Path(folder) / "images").glob("*.png") if p.stem not in set(exclude))
    if not names:
        raise SystemExit(f"no images in {Path(folder) / 'images'}")
    out = np.zeros((size, size, 3), np.uint8)
    tiles: dict[str, np.ndarray] = {}  # (each file read once, however often it repeats)
    y, x, row_h, k = 0, 0, 0, 0
    while y < size:
        path = names[k % len(names)]
        k += 1
        if path.stem not in tiles:
            tiles[path.stem] = read_image(path)[..., :3]
        tile = tiles[path.stem]
        th, tw = min(tile.shape[0], size - y), min(tile.shape[1], size - x)
        out[y:y + th, x:x + tw] = tile[:th, :tw]
        row_h = max(row_h, th)
        x += tw
        if x >= size:
            x, y, row_h = 0, y + row_h, 0
    return out, list(tiles)


def ort_session(onnx_bytes: bytes, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])


def export_folded(net, in_channels: int) -> bytes:
    import torch

    class Probabilities(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return torch.sigmoid(self.inner(x))

    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Probabilities(net).eval(), (torch.rand(1, in_channels, 64, 64),), buf, input_names=["x"],
                          output_names=["p"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "p": {0: "n", 2: "h", 3: "w"}},
                          opset_version=17, dynamo=False)
    return buf.getvalue()


class OrtNet:
    """Looks like a torch module to ``_predict_tiles``: tensors in, logits out (via ORT)."""

    def __init__(self, session):
        self.session = session

    def __call__(self, x):
        import torch

        p = self.session.run(None, {"x": np.ascontiguousarray(x.float().numpy())})[0]
        return torch.logit(torch.from_numpy(p).clamp(1e-7, 1 - 1e-7))


def int8_network(net, calibration: list[np.ndarray]):
    """``net`` (BN folded) quantised to int8 with PyTorch's FX static quantisation (x86
    backend; weights per channel, activations per tensor, observers calibrated on
    ``calibration`` tiles); a callable like the network (pads to the grid, returns float)."""
    import copy

    import torch
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from napari_minenet.model import pad_to_multiple

    class Padded(torch.nn.Module):  # forward() pads with Python control flow, which FX cannot trace
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner.forward_padded(x)

    torch.backends.quantized.engine = "x86"
    example = torch.from_numpy(calibration[0][None])
    prepared = prepare_fx(Padded(copy.deepcopy(net).to(memory_format=torch.contiguous_format)),
                          get_default_qconfig_mapping("x86"), example_inputs=(example,))
    with torch.inference_mode():
        for tile in calibration:
            prepared(torch.from_numpy(tile[None]))
    quantised = convert_fx(prepared)

    def run(x):
        h, w = x.shape[-2:]
        return quantised(pad_to_multiple(x.contiguous(), 4))[..., :h, :w]
    return run


def main(argv=None) -> dict:
    args = parse_args(argv)
    threads = common.configure_threads(args.threads)
    import torch

    import napari_minenet.inference as inference
    from napari_minenet.data import Normalizer, as_rgb_or_grey, check_image
    from napari_minenet.model import fuse_for_inference
    from napari_minenet.segmentation import segment
    from napari_minenet.zoo import load_model

    info = common.machine_info()
    print("CPU inference paths, one run, variants interleaved")
    common.print_machine(info)
    model = load_model("nuclei")
    card = model.card
    if args.mosaic:
        exclude = args.exclude if args.exclude is not None else card.metrics.get("validation", {}).get("ids", [])
        image, used = mosaic_image(args.mosaic, args.size, exclude)
        source = f"mosaic of {len(used)} real images from {args.mosaic}: {', '.join(used)}"
    else:
        image, source = common.synthetic_he(args.size), "synthetic H&E (benchmarks/common.py)"
    print(f"image: {args.size}^2, {source}; torch {torch.__version__}, {threads} threads")
    pixels = image.shape[0] * image.shape[1]
    cpu = torch.device("cpu")
    work = as_rgb_or_grey(check_image(image), card.in_channels)
    normalizer = Normalizer.for_image(work, card.normalization, card.in_channels)

    variants: dict[str, callable] = {}
    default_sample = inference.BN_SAMPLE_PIXELS

    def prepare_with(n):
        def run():
            inference.BN_SAMPLE_PIXELS = n
            try:
                return inference.prepare_network(model, work, normalizer, cpu)
            finally:
                inference.BN_SAMPLE_PIXELS = default_sample
        return run

    for n in args.sample_pixels:
        variants[f"prepare, AdaBN sample {n:,} px"] = prepare_with(n)
    # the product's graph per precision (fp32 keeps the separable pairs, bf16 multiplies them out)
    nets = {p: inference.prepare_network(model, work, normalizer, cpu, precision=p) for p in ("fp32", "bf16")}
    net = nets["fp32"]  # (channels_last)
    net_contig = net.to(memory_format=torch.contiguous_format)
    original_graph = inference.inference_network
    inference.inference_network = lambda n, **_: fuse_for_inference(n)  # benchmark-only: BN folded, nothing merged
    try:
        unmerged = inference.prepare_network(model, work, normalizer, cpu)
    finally:
        inference.inference_network = original_graph

    def tiles_with(network, tile, precision, memory_format):
        def run():
            original = inference.torch.channels_last
            if memory_format == "contiguous":
                inference.torch.channels_last = torch.contiguous_format  # (benchmark-only: the loop's layout)
            try:
                return inference._predict_tiles(work, model, cpu, tile, min(card.tile_overlap, tile // 2), 1,
                                                 precision, None, None, prepared=(network, normalizer))
            finally:
                inference.torch.channels_last = original
        return run

    for tile in args.tile_sizes:
        for precision in ("fp32", "bf16"):
            variants[f"network on tiles: {precision}, channels_last, tile {tile}"] = tiles_with(
                nets[precision], tile, precision, "channels_last")
        variants[f"network on tiles: fp32, contiguous, tile {tile}"] = tiles_with(net_contig, tile, "fp32",
                                                                                 "contiguous")
    for precision in ("fp32", "bf16"):
        variants[f"network on tiles: {precision}, channels_last, tile 1024, branches not merged"] = tiles_with(
            unmerged, 1024, precision, "channels_last")
    errors = {}
    if not args.no_onnx:
        try:
            session = ort_session(export_folded(net_contig, card.in_channels), threads)
            ort_net = OrtNet(session)
            for tile in (1024, args.size):
                variants[f"network on tiles: ONNX Runtime fp32 (BN folded), tile {tile}"] = tiles_with(
                    ort_net, tile, "fp32", "contiguous")
        except Exception as exc:  # onnxruntime missing
            errors["onnx"] = f"{type(exc).__name__}: {exc}"[:300]
    if args.int8:
        try:
            side = min(768, args.size)
            starts = [0, max(0, args.size - side)]
            calibration = [normalizer(work[y:y + side, x:x + side]) for y in starts for x in starts]
            variants["network on tiles: int8 (FX static, x86), tile 1024"] = tiles_with(
                int8_network(net, calibration), 1024, "fp32", "contiguous")
        except Exception as exc:
            errors["int8"] = f"{type(exc).__name__}: {exc}"[:300]
    compile_first = None
    if args.compile:
        try:
            compiled = torch.compile(net)
            t0 = time.perf_counter()
            tiles_with(compiled, 1024, "fp32", "channels_last")()
            compile_first = time.perf_counter() - t0
            variants["network on tiles: torch.compile fp32, channels_last, tile 1024"] = tiles_with(
                compiled, 1024, "fp32", "channels_last")
        except Exception as exc:
            errors["compile"] = f"{type(exc).__name__}: {exc}"[:300]
    variants["segment() end to end, default precision"] = lambda: segment(image, model, device="cpu")
    variants["segment() end to end, precision='fp32'"] = lambda: segment(image, model, device="cpu",
                                                                         precision="fp32")

    reference = tiles_with(net, 1024, "fp32", "channels_last")()
    outputs = {}
    for fn in variants.values():  # warm-up (oneDNN primitives per shape)
        fn()
    load_before = os.getloadavg()
    times = {k: [] for k in variants}
    for r in range(args.repeats):
        print(f"  round {r + 1}/{args.repeats}", flush=True)
        for name, fn in variants.items():
            t0 = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - t0)
            if r == 0 and name.startswith("network on tiles"):
                outputs[name] = float(np.abs(out - reference).max())
    load_after = os.getloadavg()
    rows = []
    for name, ts in times.items():
        s = float(np.median(ts))
        rows.append({"variant": name, "median_s": s, "mpx_s": mpx_per_s(pixels, s), "times": ts,
                     "max_abs_diff_vs_fp32_cl_1024": outputs.get(name)})
    print_table(f"{args.size}^2, medians of {args.repeats} interleaved rounds (load average before "
                f"{', '.join(f'{v:.2f}' for v in load_before)}, after {', '.join(f'{v:.2f}' for v in load_after)})",
                ["variant", "median s", "Mpx/s", "max |p - p(fp32, cl, 1024)|"],
                [[r["variant"], r["median_s"], r["mpx_s"], "-" if r["max_abs_diff_vs_fp32_cl_1024"] is None
                  else f"{r['max_abs_diff_vs_fp32_cl_1024']:.1e}"] for r in rows])
    if compile_first is not None:
        print(f"torch.compile first call (compilation included): {compile_first:.1f} s")
    for k, v in errors.items():
        print(f"{k}: not measured ({v})")
    data = {"script": "cpu_paths", "machine": info, "image": source, "size": args.size, "threads": threads,
            "repeats": args.repeats, "load_average_before": load_before, "load_average_after": load_after,
            "rows": rows, "compile_first_call_s": compile_first, "errors": errors}
    common.write_json(args.json, data)
    return data


if __name__ == "__main__":
    main()
