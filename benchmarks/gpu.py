"""Mini-Net on a GPU: fp32 / bf16 / fp16, batched tiles, peak GPU memory, OOM fallback.

What is measured per image size (synthetic H&E RGB uint8, ``benchmarks/common.py``), per
precision and per tile batch size (median of ``--repeats`` after one warm-up, the device
synchronised before every clock reading):

* **network**: the prepared network (AdaBN statistics of the image folded into the
  convolutions) on a batch of ``--tile-size`` tiles already on the device, output kept
  on the device: the network's own throughput (the issue's >= 500 Mpx/s target on an
  H100/H200-class GPU);
* **predict_tiled**: the product path, image in host memory -> probability maps in host
  memory (normalisation, AdaBN, tiles, transfers, blending);
* **segment**: end to end, labels out (post-processing runs on the CPU), batch size 1
  and the largest batch size only;
* peak GPU memory (``torch.cuda.max_memory_allocated``) of each measurement;
* out of memory: a network batch that does not fit is retried with half the batch (the
  row says so); ``predict_tiled`` halves its tile size on its own (its warning is kept).

Without CUDA the script says so and exits 0, unless ``--device cpu`` is given: then the
same code runs on the CPU (for the test of its plumbing; tiny sizes; no GPU numbers).

Example::

    python benchmarks/gpu.py --json docs/gpu.json                     # on the GPU machine
    python benchmarks/gpu.py --device cpu --sizes 64 --tile-size 32 --batch-sizes 1 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
from common import fmt_bytes, mpx_per_s, print_table  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--tile-size", type=int, default=1024)
    p.add_argument("--overlap", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-segment", action="store_true", help="skip the end-to-end segment() rows")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (plumbing check only)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (post-processing; the CPU device)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    return p.parse_args(argv)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device) -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def timed(fn, device, repeats: int) -> tuple[float, list[float]]:
    """Median seconds of ``fn()`` after one warm-up call, synchronised."""
    fn()
    _sync(device)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), times


def is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def network_row(net, size: int, tile: int, batch: int, precision: str, device, repeats: int,
                in_channels: int = 3) -> dict:
    """The network alone on ``batch`` tiles of ``tile``^2 on the device; halves the batch on OOM."""
    import torch

    from napari_minenet.inference import _autocast

    row = {"kind": "network", "size": size, "precision": precision, "batch_requested": batch, "tile": tile}
    fmt = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    notes = []
    while batch >= 1:
        try:
            _reset_peak(device)
            x = torch.rand(batch, in_channels, tile, tile, device=device).contiguous(memory_format=fmt)

            def run():
                with torch.inference_mode(), _autocast(device, precision):
                    return net(x)

            s, times = timed(run, device, repeats)
            row.update(batch=batch, seconds=s, times=times, mpx_s=mpx_per_s(batch * tile * tile, s),
                       gpu_peak_bytes=_peak(device))
            break
        except Exception as exc:  # noqa: BLE001 (OOM is reported, anything else too)
            if not is_oom(exc):
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                break
            notes.append(f"out of memory at batch {batch}")
            batch //= 2
            x = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if batch < 1 and "seconds" not in row:
        row["error"] = "out of memory even at batch 1"
    if notes:
        row["note"] = "; ".join(notes)
    return row


def product_row(kind: str, fn, size: int, precision: str, batch: int, device, repeats: int) -> dict:
    row = {"kind": kind, "size": size, "precision": precision, "batch_requested": batch, "batch": batch}
    try:
        _reset_peak(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            s, times = timed(fn, device, repeats)
        row.update(seconds=s, times=times, mpx_s=mpx_per_s(size * size, s), gpu_peak_bytes=_peak(device))
        oom = [str(w.message) for w in caught if "out of memory" in str(w.message).lower()]
        if oom:
            row["note"] = "; ".join(sorted(set(oom)))
    except Exception as exc:  # noqa: BLE001
        row["error"] = f"{type(exc).__name__}: {exc}"[:300]
    return row


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        msg = (f"no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False): nothing measured; "
               "run this on a GPU machine (or --device cpu to check the script itself)")
        print(msg)
        data = {"script": "gpu", "skipped": msg}
        common.write_json(args.json, data)
        return data
    threads = common.configure_threads(args.threads)
    from napari_minenet.data import Normalizer, as_rgb_or_grey, check_image
    from napari_minenet.inference import predict_tiled, prepare_network, resolve_precision
    from napari_minenet.segmentation import segment

    info = common.machine_info()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({threads} threads)"
    info["device"] = name
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu_memory"] = int(props.total_memory)
        info["cuda"] = torch.version.cuda
    print(f"Mini-Net on {name}; torch {torch.__version__}")
    common.print_machine(info)
    bm = common.load_benchmark_model()
    model, card = bm.model, bm.model.card
    print(f"model: {bm.note}")
    precisions = []
    for p in args.precisions:
        if device.type == "cuda" and p == "bf16" and not torch.cuda.is_bf16_supported():
            print("bf16: not supported on this GPU, skipped")
            continue
        precisions.append(resolve_precision(device, p))
    rows = []
    for size in args.sizes:
        image = common.synthetic_he(size)
        work = as_rgb_or_grey(check_image(image), card.in_channels)
        normalizer = Normalizer.for_image(work, card.normalization, card.in_channels)
        nets = {p: prepare_network(model, work, normalizer, device, precision=p) for p in precisions}
        tile = min(args.tile_size, size)
        for precision in precisions:
            net = nets[precision]  # (the graph the product runs in that precision)
            for batch in args.batch_sizes:
                print(f"  {size}^2 {precision} batch {batch} ...", flush=True)
                rows.append(network_row(net, size, tile, batch, precision, device, args.repeats, card.in_channels))
                rows.append(product_row(
                    "predict_tiled", lambda b=batch, p=precision: predict_tiled(
                        image, model, device=device, tile_size=args.tile_size, overlap=args.overlap, batch_size=b,
                        precision=p), size, precision, batch, device, args.repeats))
                if not args.no_segment and batch in (min(args.batch_sizes), max(args.batch_sizes)):
                    rows.append(product_row(
                        "segment", lambda b=batch, p=precision: segment(
                            image, model, device=str(device), tile_size=args.tile_size, overlap=args.overlap,
                            batch_size=b, precision=p), size, precision, batch, device, args.repeats))
        del image, work, net, nets
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print_table(f"Mini-Net on {name} (median of {args.repeats} after one warm-up; Mpx/s of image pixels)",
                ["what", "size", "precision", "batch", "s", "Mpx/s", "GPU peak", "note"],
                [[r["kind"], f"{r['size']}^2", r["precision"], r.get("batch", r["batch_requested"]),
                  r.get("seconds"), r.get("mpx_s"), fmt_bytes(r.get("gpu_peak_bytes")),
                  r.get("error") or r.get("note") or ""] for r in rows])
    best = max((r for r in rows if r["kind"] == "network" and "mpx_s" in r), key=lambda r: r["mpx_s"], default=None)
    if best is not None:
        print(f"best network throughput: {best['mpx_s']:.1f} Mpx/s ({best['precision']}, batch {best['batch']} x "
              f"{best['tile']}^2) on {name}" + (" -- target >= 500 Mpx/s on an H100/H200-class GPU: "
                                                 f"{'met' if best['mpx_s'] >= 500 else 'MISSED'}"
                                                 if device.type == "cuda" else " (CPU: plumbing check only)"))
    data = {"script": "gpu", "device": name, "machine": info, "model": {"trained": bm.trained, "note": bm.note},
            "tile_size": args.tile_size, "overlap": args.overlap, "repeats": args.repeats, "rows": rows,
            "best_network": best, "load_average_end": list(os.getloadavg())}
    common.write_json(args.json, data)
    return data


if __name__ == "__main__":
    main()
