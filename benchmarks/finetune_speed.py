"""Fine-tuning speed: training patches (256^2) per second, Mini-Net vs the reference U-Net.

What is measured, per network and device (CPU, and CUDA when present):

* ``napari_minenet.training.fit`` (the real training loop: PatchSampler batches of 8 patches
  from one image with the task's augmentation, channels_last, forward + loss + L2-SP penalty
  (as ``finetune`` uses) + backward + Adam) run for a ``--seconds`` budget; the time of
  every step is read from its progress record; patches/s = batch / median step time after
  ``--warmup-steps`` warm-up steps (and the plain average over all steps);
* the split of one step: ``PatchSampler.sample()`` alone (numpy augmentation) and the torch
  compute alone on a fixed batch;
* optionally (``--product-finetune``) the whole ``finetune()`` generator, which also scores
  the held-out example every 10 steps: effective patches/s of the product feature.

Synthetic H&E-like examples only (no ../shared). Example::

    python benchmarks/finetune_speed.py --seconds 60
    python benchmarks/finetune_speed.py --seconds 10 --unet-seconds 20   # quick
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import median_time, print_table  # noqa: E402

TARGET = 8.0
STRETCH = 20.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="fit() time budget for Mini-Net")
    p.add_argument("--unet-seconds", type=float, default=60.0, help="fit() time budget for the U-Net")
    p.add_argument("--warmup-steps", type=int, default=2, help="steps excluded from the median")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patch-size", type=int, default=256)
    p.add_argument("--examples", type=int, default=4, help="synthetic training examples (512^2 each)")
    p.add_argument("--split-repeats", type=int, default=5, help="repeats of the sampler / compute split")
    p.add_argument("--no-unet", action="store_true")
    p.add_argument("--product-finetune", action="store_true",
                   help="also run napari_minenet.finetuning.finetune() for --seconds (includes held-out validation)")
    p.add_argument("--devices", nargs="+", default=None,
                   help="devices to measure (default: cpu, plus cuda when available)")
    common.add_common_arguments(p, device=False)
    return p.parse_args(argv)


def synthetic_examples(n: int, size: int = 512):
    from napari_minenet.data import TrainingExample

    examples = []
    for k in range(n):
        image = common.synthetic_he(1024, seed=k)[:size, :size].copy()
        labels = common.synthetic_truth(1024, seed=k)[0][:size, :size].copy()
        examples.append(TrainingExample(f"synthetic-{k}", image, labels > 0, labels))
    return examples


def make_sampler(examples, card, args, seed: int = 0):
    from napari_minenet.patches import Augmentation, PatchSampler

    return PatchSampler(examples, patch_size=args.patch_size, batch_size=args.batch_size,
                        normalization=card.normalization, in_channels=card.in_channels, contours=card.has_contours,
                        augmentation=Augmentation.for_task(card.task), seed=seed)


def measure_fit(model, examples, args, device, seconds: float) -> dict:
    """Run fit() for ``seconds``; per-step durations from the progress records."""
    import torch

    from napari_minenet.finetuning import l2sp_penalty
    from napari_minenet.training import fit

    model = copy.deepcopy(model)
    sampler = make_sampler(examples, model.card, args)
    gen = fit(model, sampler, [], lr=3e-4, epochs=1, steps_per_epoch=10**9, max_seconds=seconds, device=device,
              regularizer=l2sp_penalty(model.network, 1e-2))
    stamps = [0.0]
    for record in gen:
        if record.kind == "step":
            stamps.append(record.elapsed)
    steps = len(stamps) - 1
    durations = [b - a for a, b in zip(stamps, stamps[1:])]
    after = durations[args.warmup_steps:] or durations
    median_step = statistics.median(after) if after else float("nan")
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"steps": steps, "seconds": stamps[-1], "warmup_steps": min(args.warmup_steps, steps),
            "median_step_s": median_step, "patches_per_s": args.batch_size / median_step if after else float("nan"),
            "average_patches_per_s": steps * args.batch_size / stamps[-1] if steps else float("nan"),
            "first_step_s": durations[0] if durations else None}


def measure_split(model, examples, args, device) -> dict:
    """Sampler alone, and forward + loss + L2-SP + backward + Adam alone on a fixed batch."""
    import torch

    from napari_minenet.finetuning import l2sp_penalty
    from napari_minenet.losses import MiniNetLoss

    sampler = make_sampler(examples, model.card, args, seed=1)
    sample_s, _, (x, y) = median_time(sampler.sample, args.split_repeats, warmup=1)
    net = copy.deepcopy(model.network).to(device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(net.parameters(), lr=3e-4)
    loss_fn = MiniNetLoss()
    reg = l2sp_penalty(model.network, 1e-2)
    x = x.to(device).contiguous(memory_format=torch.channels_last)
    y = y.to(device)

    def step():
        loss = loss_fn(net(x), y) + reg(net)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return float(loss.detach())

    compute_s, _, _ = median_time(step, args.split_repeats, warmup=1)
    return {"sample_s": sample_s, "sampler_patches_per_s": args.batch_size / sample_s, "compute_s": compute_s,
            "compute_patches_per_s": args.batch_size / compute_s}


def measure_product_finetune(model, examples, args, device) -> dict:
    from napari_minenet.finetuning import FinetuneConfig, finetune
    from napari_minenet.training import run_to_end

    cfg = FinetuneConfig(max_seconds=args.seconds, patch_size=args.patch_size, batch_size=args.batch_size,
                         device=str(device))
    with tempfile.TemporaryDirectory() as tmp:
        gen = finetune(model, examples, cfg, output=Path(tmp) / "bench-finetune")
        t0 = time.perf_counter()
        result = run_to_end(gen)
        wall = time.perf_counter() - t0
    return {"steps": result.steps, "seconds": result.seconds, "wall_s": wall,
            "effective_patches_per_s": result.steps * args.batch_size / result.seconds if result.seconds else None}


def main(argv=None) -> dict:
    args = parse_args(argv)
    threads = common.configure_threads(args.threads)
    import torch

    from napari_minenet.inference import select_device

    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    info = common.machine_info()
    print(f"Fine-tuning speed: {args.patch_size}^2 patches per second, batch {args.batch_size}, "
          f"training.fit with L2-SP, synthetic H&E examples ({args.examples} x 512^2)")
    common.print_machine(info)
    bm = common.load_benchmark_model()
    print(f"model: {bm.note}")
    if not torch.cuda.is_available():
        print("CUDA: not available, CPU only")
    examples = synthetic_examples(args.examples)
    nets = [("Mini-Net", bm.model, args.seconds)]
    if not args.no_unet:
        try:
            nets.append(("U-Net", common.reference_unet(bm.model.card.out_channels), args.unet_seconds))
        except Exception as exc:
            print(f"reference U-Net unavailable: {exc}")
    rows = []
    for dev_name in devices:
        device = select_device(dev_name)
        for name, model, seconds in nets:
            print(f"  {name} on {device}: fit() for {seconds:.0f} s ...", flush=True)
            row = {"network": name, "device": str(device), "parameters": common.parameter_count(model)}
            row.update(measure_split(model, examples, args, device))  # first: also warms up the kernels
            row.update(measure_fit(model, examples, args, device, seconds))
            if args.product_finetune and name == "Mini-Net":
                row["product_finetune"] = measure_product_finetune(model, examples, args, device)
            rows.append(row)

    print_table("training steps (patches/s = batch / median step time after warm-up)",
                ["network", "device", "params", "steps", "median step s", "patches/s", "avg patches/s",
                 "sampler only patches/s", "compute only patches/s"],
                [[r["network"], r["device"], f"{r['parameters']:,}", r["steps"], r["median_step_s"],
                  r["patches_per_s"], r["average_patches_per_s"], r["sampler_patches_per_s"],
                  r["compute_patches_per_s"]] for r in rows])
    ratios = {}
    for dev_name in {r["device"] for r in rows}:
        mini = next((r for r in rows if r["device"] == dev_name and r["network"] == "Mini-Net"), None)
        unet = next((r for r in rows if r["device"] == dev_name and r["network"] == "U-Net"), None)
        if mini and unet and unet["patches_per_s"] > 0:
            ratios[dev_name] = mini["patches_per_s"] / unet["patches_per_s"]
            print(f"Mini-Net / U-Net on {dev_name}: {ratios[dev_name]:.1f}x patches/s")
    for r in rows:
        if "product_finetune" in r:
            pf = r["product_finetune"]
            print(f"finetune() on {r['device']}: {pf['steps']} steps in {pf['seconds']:.1f} s (held-out validation "
                  f"every 10 steps included): {pf['effective_patches_per_s']:.2f} patches/s effective")
    cpu_mini = next((r for r in rows if r["device"] == "cpu" and r["network"] == "Mini-Net"), None)
    targets = []
    if cpu_mini:
        v = cpu_mini["patches_per_s"]
        targets.append({"target": "fine-tune >= 8 patches/s on CPU (stretch 20)", "measured": f"{v:.2f} patches/s",
                        "met": v >= TARGET, "stretch_met": v >= STRETCH})
        print(f"target >= {TARGET:.0f} patches/s (stretch {STRETCH:.0f}) on CPU: "
              f"{'met' if v >= TARGET else 'MISSED'}{' (stretch met)' if v >= STRETCH else ''}")
    data = {"script": "finetune_speed",
            "measured": "training.fit steps (PatchSampler batch, forward, MiniNetLoss, L2-SP, backward, Adam) on "
                        "synthetic H&E patches; patches/s from the median step time after warm-up",
            "machine": info, "busy_warning": common.busy_warning(info), "threads": threads,
            "model": {"trained": bm.trained, "note": bm.note}, "batch_size": args.batch_size,
            "patch_size": args.patch_size, "rows": rows, "ratios_mini_over_unet": ratios, "targets": targets}
    common.write_json(args.json, data)
    return data


if __name__ == "__main__":
    main()
