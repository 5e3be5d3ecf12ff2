"""Mini-Net through ONNX Runtime (CPU) vs torch, the network alone, on whole images.

What is measured per size (synthetic H&E RGB, median of repeats after one warm-up):

* ORT: the graph written by ``napari_minenet.export.export_onnx``; input float32
  (1, 3, H, W) = pixels / 255; output probabilities. The card's normalisation is in the
  graph, and every BatchNorm normalises with the statistics of the input it sees (the
  whole image: no tiling, no sampling);
* torch, same function: the export wrapper itself run eagerly (input-statistics BN);
* torch, product network: ``prepare_network`` (Normalizer + AdaBN on a sample of tiles +
  BN folding) timed on its own, then the prepared (BN-folded, channels_last) network on the
  whole normalised image, untiled; the sigmoid is included;
* ORT, BN folded: the prepared network exported for this benchmark only (what ONNX could do
  if statistics were folded in before export);
* for reference, ``predict_tiled`` (the product path: tiles, blending, AdaBN included).

Example::

    python benchmarks/onnx_speed.py --sizes 512 1024 2048
"""

from __future__ import annotations

import argparse
import gc
import io
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
from common import median_time, mpx_per_s, print_table  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-folded", action="store_true", help="skip the BN-folded ONNX variant")
    p.add_argument("--no-tiled", action="store_true", help="skip the predict_tiled reference")
    common.add_common_arguments(p, device=False)
    return p.parse_args(argv)


def ort_session(path_or_bytes, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path_or_bytes, opts, providers=["CPUExecutionProvider"])


def export_folded(net, in_channels: int, opset: int) -> bytes:
    """Benchmark-only: the prepared (BN-folded) network + sigmoid as ONNX bytes."""
    import torch

    class Probabilities(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return torch.sigmoid(self.inner(x))

    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy exporter / tracer notices, expected here
        torch.onnx.export(Probabilities(net.to(memory_format=torch.contiguous_format)).eval(),
                          (torch.rand(1, in_channels, 64, 64),), buf, input_names=["x"], output_names=["p"],
                          dynamic_axes={"x": {2: "h", 3: "w"}, "p": {2: "h", 3: "w"}}, opset_version=opset,
                          dynamo=False)
    return buf.getvalue()


def main(argv=None) -> dict:
    args = parse_args(argv)
    threads = common.configure_threads(args.threads)
    import onnxruntime as ort
    import torch

    from napari_minenet.data import Normalizer
    from napari_minenet.export import ExportWrapper, export_onnx
    from napari_minenet.inference import predict_tiled, prepare_network

    info = common.machine_info()
    info["onnxruntime"] = ort.__version__
    print("Mini-Net network alone: ONNX Runtime (CPU) vs torch (CPU), whole images, synthetic H&E RGB")
    common.print_machine(info)
    print(f"onnxruntime {ort.__version__}, {threads} intra-op threads")
    print("NOTE: the exported graph normalises every BatchNorm with the statistics of its whole input (no tiling, "
          "no sampling); torch's product path estimates them once on a sample of tiles (AdaBN) and folds them into "
          "the convolutions, timed separately below as 'prepare'.")
    bm = common.load_benchmark_model()
    model, card = bm.model, bm.model.card
    print(f"model: {bm.note}")
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_onnx(model, Path(tmp) / "minenet.onnx", opset=args.opset)
        session = ort_session(str(path), threads)
    wrapper = ExportWrapper(model).eval()
    folded_session = None

    rows = []
    for size in args.sizes:
        pixels = size * size
        print(f"  {size}^2 ...", flush=True)
        image = common.synthetic_he(size)
        x01 = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255.0)
        row = {"size": size, "pixels": pixels}

        ort_s, _, p_ort = median_time(lambda: session.run(None, {"image": x01})[0], args.repeats, warmup=1)
        row.update(ort_s=ort_s, ort_mpx_s=mpx_per_s(pixels, ort_s))

        t01 = torch.from_numpy(x01)
        with torch.inference_mode():
            eager_s, _, p_eager = median_time(lambda: wrapper(t01), args.repeats, warmup=1)
        row.update(torch_same_graph_s=eager_s, torch_same_graph_mpx_s=mpx_per_s(pixels, eager_s),
                   max_abs_diff_ort_vs_torch_same_graph=float(np.abs(p_ort - p_eager.numpy()).max()))
        del p_eager

        normalizer = Normalizer.for_image(image, card.normalization, card.in_channels)
        prep_s, _, net = median_time(lambda: prepare_network(model, image, normalizer, cpu), args.repeats)
        xn = torch.from_numpy(normalizer(image)[None]).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            net_s, _, p_torch = median_time(lambda: torch.sigmoid(net(xn)), args.repeats, warmup=1)
        row.update(prepare_s=prep_s, torch_network_s=net_s, torch_network_mpx_s=mpx_per_s(pixels, net_s),
                   max_abs_diff_ort_vs_torch_product=float(np.abs(p_ort - p_torch.numpy()).max()),
                   adabn_from_whole_image=pixels <= (1 << 20))
        del p_torch

        if not args.no_folded:
            if folded_session is None:
                folded_session = ort_session(export_folded(net, card.in_channels, args.opset), threads)
            xf = np.ascontiguousarray(xn.numpy())
            f_s, _, _ = median_time(lambda: folded_session.run(None, {"x": xf})[0], args.repeats, warmup=1)
            row.update(ort_folded_s=f_s, ort_folded_mpx_s=mpx_per_s(pixels, f_s))
        if not args.no_tiled:
            tiled_s, _, _ = median_time(lambda: predict_tiled(image, model, device="cpu"), args.repeats)
            row.update(predict_tiled_s=tiled_s, predict_tiled_mpx_s=mpx_per_s(pixels, tiled_s))
        row["ort_over_torch_network"] = row["ort_mpx_s"] / row["torch_network_mpx_s"]
        del image, x01, xn, p_ort, net
        gc.collect()
        rows.append(row)

    print_table("network alone, whole image (Mpx/s, median)",
                ["size", "ORT (export)", "torch same graph", "torch product net", "ORT/torch product",
                 "ORT BN folded", "prepare s (torch)", "predict_tiled Mpx/s"],
                [[f"{r['size']}^2", r["ort_mpx_s"], r["torch_same_graph_mpx_s"], r["torch_network_mpx_s"],
                  f"{r['ort_over_torch_network']:.2f}x", r.get("ort_folded_mpx_s"), r["prepare_s"],
                  r.get("predict_tiled_mpx_s")] for r in rows])
    print_table("agreement (max |probability difference|)",
                ["size", "ORT vs torch same graph", "ORT vs torch product", "AdaBN sample = whole image"],
                [[f"{r['size']}^2", f"{r['max_abs_diff_ort_vs_torch_same_graph']:.2e}",
                  f"{r['max_abs_diff_ort_vs_torch_product']:.2e}", "yes" if r["adabn_from_whole_image"] else
                  "no (torch samples tiles)"] for r in rows])
    data = {"script": "onnx_speed",
            "measured": "network alone on whole images: ONNX Runtime CPU (export_onnx graph, input-statistics BN) vs "
                        "torch (prepared BN-folded network; prepare_network timed separately)",
            "note": "ONNX BN uses the statistics of the whole input (no tiling)",
            "machine": info, "busy_warning": common.busy_warning(info), "threads": threads,
            "model": {"trained": bm.trained, "note": bm.note}, "rows": rows}
    common.write_json(args.json, data)
    return data


if __name__ == "__main__":
    main()
