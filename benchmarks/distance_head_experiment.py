"""Experiment (issue 12, 2026-12-07; not a product path): a third output channel regressing each
nucleus's distance to its border (normalised to 1 at its centre), fine-tuned from the shipped
nuclei weights beside the shipped loss, and seeds taken from it instead of the distance
transform of the contour-free interior. Result: no better than the shipped split
(docs/results.md, "Where the validation AJI is lost, and a distance head tried on the CPU").

    python benchmarks/distance_head_experiment.py train --steps 1600 --out runs/disthead
    python benchmarks/distance_head_experiment.py eval runs/disthead/step_1600.safetensors
    python benchmarks/distance_head_experiment.py eval init      # the shipped model, same code

The card format allows 1 or 2 output channels, so the three-channel model here is built by
hand (its card is copied with the count patched); nothing it makes can be saved as a model.
Reads ../shared/data (MoNuSeg training images and their held-out 6, TNBC slides 09-11).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from scipy import ndimage as ndi

from napari_minenet.data import load_dataset
from napari_minenet.losses import MiniNetLoss, bce_loss
from napari_minenet.patches import Augmentation, PatchSampler, contour_target
from napari_minenet.zoo import load_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def norm_distance(labels: np.ndarray) -> np.ndarray:
    out = np.zeros(labels.shape, np.float32)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in sl)
        m = labels[sl] == i
        d = ndi.distance_transform_edt(m)
        if d.max() > 0:
            out[sl][m] = (d[m] / d.max()).astype(np.float32)
    return out


def three_channel(model):
    net = copy.deepcopy(model.network)
    old = net.classifier
    new = torch.nn.Conv2d(old.in_channels, 3, 1)
    with torch.no_grad():
        new.weight[:2] = old.weight
        new.bias[:2] = old.bias
        new.weight[2:] = old.weight[:1] * 0.5
        new.bias[2:] = 0.0
    net.classifier = new
    net.out_channels = 3
    card = copy.copy(model.card)
    object.__setattr__(card, "out_channels", 3)  # (the card format allows 1 or 2: scratch only)
    return dataclasses.replace(model, network=net, card=card)


def train(args):
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    base = load_model("nuclei")
    model = three_channel(base)
    ids = base.card.training["train_ids"]
    exs = load_dataset(f"{DATA}/monuseg/train", ids)
    targets = [np.stack([ex.mask.astype(np.float32), contour_target(ex.labels).astype(np.float32),
                         norm_distance(ex.labels)]) for ex in exs]
    aug = Augmentation(**base.card.training["augmentation"])
    sampler = PatchSampler(exs, patch_size=256, batch_size=8, normalization=base.card.normalization,
                           in_channels=3, contours=True, augmentation=aug, seed=args.seed, targets=targets)
    net = model.network
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    seg_loss = MiniNetLoss()
    t0 = time.time()
    run = []
    for step in range(1, args.steps + 1):
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = sampler.sample()
        logits = net(x)
        l_seg = seg_loss(logits[:, :2], y[:, :2])
        l_dist = bce_loss(logits[:, 2:3], y[:, 2:3])
        loss = l_seg + args.dist_weight * l_dist
        opt.zero_grad()
        loss.backward()
        opt.step()
        run.append((l_seg.item(), l_dist.item()))
        if step % 50 == 0:
            a = np.mean(run[-50:], axis=0)
            print(f"step {step} seg {a[0]:.4f} dist {a[1]:.4f} lr {lr:.2e} {time.time() - t0:.0f}s", flush=True)
        if step % args.every == 0 or step == args.steps:
            net.eval()
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, f"{args.out}/step_{step}.safetensors")
            net.train()


def instances_from_distance(prob, contour, dist, thr, marker, min_size, mode="thresh", h=0.15):
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    fg = prob > thr
    fg = ndi.binary_fill_holes(fg)
    if mode == "thresh":
        seeds, _ = ndi.label((dist > marker) & fg)
    else:
        f = np.where(fg, dist, 0).astype(np.float64)
        if mode == "hint":  # the interior the shipped split uses (foreground - contour > 0.7)
            f = ndi.gaussian_filter(f * ((prob - contour) > 0.7), 1.0) * fg
        if mode == "hmaxs":
            f = ndi.gaussian_filter(f, 1.0) * fg
        hm = h_maxima(f, h)
        seeds, _ = ndi.label(hm & fg)
    labels = watershed(-dist, seeds, mask=fg)
    # foreground components without a seed keep their own id
    comp, n = ndi.label(fg & (labels == 0))
    labels = np.where(comp > 0, comp + labels.max(), labels)
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    labels[small[labels]] = 0
    return labels


def evaluate(args):
    from napari_minenet.inference import predict_tiled
    from napari_minenet.metrics import instance_metrics, pixel_metrics
    from napari_minenet.segmentation import labels_for

    torch.set_num_threads(args.threads)
    base = load_model("nuclei")
    model = three_channel(base)
    if args.weights != "init":
        model.network.load_state_dict(load_file(args.weights))
    model.network.eval()
    card = model.card
    val_ids = base.card.training["val_ids"]
    sets = {"monuseg6": load_dataset(f"{DATA}/monuseg/train", val_ids)}
    tnbc = load_dataset(f"{DATA}/tnbc/train")
    sets["tnbc09-11"] = [ex for ex in tnbc if ex.id.rsplit("_", 1)[0] in ("tnbc_09", "tnbc_10", "tnbc_11")]
    if args.limit:
        sets = {k: v[: args.limit] for k, v in sets.items()}
    variants = {"shipped-post": None}
    for m in args.markers:
        variants[f"thresh{m}"] = ("thresh", m, 0)
    for h in args.h:
        variants[f"hmax{h}"] = ("hmax", 0, h)
        variants[f"hmaxs{h}"] = ("hmaxs", 0, h)
        variants[f"hint{h}"] = ("hint", 0, h)
    out = {}
    for sname, exs in sets.items():
        rows = {k: [] for k in variants}
        for ex in exs:
            probs = predict_tiled(ex.image, model)
            for name, v in variants.items():
                if v is None:
                    lab = labels_for(probs[0], probs[1], card, card.default_threshold, True, card.min_size)
                else:
                    lab = instances_from_distance(probs[0], probs[1], probs[2], card.default_threshold, v[1],
                                                  card.min_size, mode=v[0], h=v[2])
                m = pixel_metrics(lab > 0, ex.mask)
                m.update(instance_metrics(lab, ex.labels))
                rows[name].append({k: float(m[k]) for k in ("f1", "aji", "pq")})
        out[sname] = {k: {q: round(float(np.mean([r[q] for r in v])), 4) for q in ("f1", "aji", "pq")}
                      for k, v in rows.items()}
    print(json.dumps({"weights": args.weights, **out}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--steps", type=int, default=1600)
    t.add_argument("--every", type=int, default=400)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--dist-weight", type=float, default=1.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--out", default="runs/disthead")
    e = sub.add_parser("eval")
    e.add_argument("weights")
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--limit", type=int, default=0)
    e.add_argument("--markers", type=float, nargs="*", default=[0.4, 0.5, 0.6, 0.7])
    e.add_argument("--h", type=float, nargs="*", default=[0.05, 0.1, 0.2, 0.3])
    args = ap.parse_args()
    (train if args.cmd == "train" else evaluate)(args)


if __name__ == "__main__":
    sys.exit(main())
