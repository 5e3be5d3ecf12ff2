"""Training batches: random patches with augmentation, one image per batch.

Every batch holds ``batch_size`` patches cut from the same image. BatchNorm therefore
learns with per-image statistics, which is what inference uses (AdaBN on the image being
segmented, see inference.py): training and segmentation normalise the same way, which is
what makes the model robust to a new stain or camera.

Augmentation (all tasks): random position, scale (0.75-1.33), flips and 90 degree
rotations, brightness / contrast jitter. Nuclei add H&E stain jitter in HED
colour space (Tellez et al. 2018 style).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .data import Normalizer, TrainingExample, as_rgb_or_grey
from .tasks import task

__all__ = ["PatchSampler", "ParallelSampler", "contour_target", "example_targets", "Augmentation"]


def contour_target(labels: np.ndarray, width: int = 2) -> np.ndarray:
    """Boolean map of instance borders (inner boundaries, ``width`` pixels thick)."""
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    edges = find_boundaries(labels, mode="inner")
    if width > 1:
        edges = ndi.binary_dilation(edges, iterations=width - 1) & (labels > 0)
    return edges


@dataclass
class Augmentation:
    scale: tuple[float, float] = (0.75, 1.33)
    flips: bool = True
    intensity: float = 0.15  # brightness / contrast jitter amplitude
    stain: float = 0.0  # H&E stain jitter amplitude (0 = off)

    @classmethod
    def for_task(cls, task_name: str) -> Augmentation:
        """The augmentation of the task table's row (tasks.TASK_TABLE)."""
        return cls(**task(task_name).augmentation)


def example_targets(ex: TrainingExample, contours: bool) -> np.ndarray:
    """(T, H, W) float32 training targets of an example: the foreground mask, and with
    ``contours`` the instance borders (from the labels, or from the mask's components)."""
    planes = [ex.mask.astype(np.float32)]
    if contours:
        if ex.labels is None:
            from scipy import ndimage as ndi

            labels, _ = ndi.label(ex.mask)
        else:
            labels = ex.labels
        planes.append(contour_target(labels).astype(np.float32))
    return np.stack(planes)


class PatchSampler:
    """Draws (input, target, valid) batches from a list of examples."""

    def __init__(
        self,
        examples: list[TrainingExample],
        *,
        patch_size: int,
        batch_size: int,
        normalization: dict,
        in_channels: int = 3,
        contours: bool = False,
        augmentation: Augmentation | None = None,
        seed: int = 0,
        targets: list[np.ndarray] | None = None,
        weights: list[np.ndarray] | None = None,
        focus: list[np.ndarray | None] | None = None,
        focus_probability: float = 0.0,
    ) -> None:
        """``targets`` (per example, (T, H, W) float, may be soft) replace the targets made
        from the masks / labels; ``weights`` (per example, (H, W) or (K, H, W) float) weight
        each pixel's loss (``sample`` then returns them as a third tensor, (B, K, P, P)); ``focus`` (per example, (H, W)
        bool or None) marks where the user corrected: with probability ``focus_probability``
        a patch is centred on a random correction instead of a random position."""
        if not examples:
            raise ValueError("no training examples")
        self.examples = examples
        self.patch_size = int(patch_size)
        self.batch_size = int(batch_size)
        self.in_channels = in_channels
        self.contours = contours
        self.aug = augmentation or Augmentation()
        self.rng = np.random.default_rng(seed)
        self._images = [as_rgb_or_grey(ex.image, in_channels) for ex in examples]
        self._normalizers = [Normalizer.for_image(img, normalization, in_channels) for img in self._images]
        if targets is None:
            targets = [example_targets(ex, contours) for ex in examples]
        # weights travel as the last target planes (same crop and flips)
        weights = None if weights is None else [w[None] if w.ndim == 2 else w for w in weights]
        self._n_weights = 0 if weights is None else weights[0].shape[0]
        if weights is not None:
            targets = [np.concatenate([t, w.astype(np.float32)]) for t, w in zip(targets, weights)]
        self._weighted = weights is not None
        self._targets = targets
        # binary target planes stay binary when a patch is resized; soft ones (a parent's
        # probabilities) and the weights stay soft
        n_hard = len(targets[0]) - self._n_weights
        self._binary = [[c < n_hard and bool(((t[c] == 0) | (t[c] == 1)).all()) for c in range(len(t))]
                        for t in targets]
        self._focus = [None if f is None or not f.any() else np.flatnonzero(f) for f in (focus or [None] * len(examples))]
        self.focus_probability = float(focus_probability)
        areas = np.array([ex.mask.size for ex in examples], float)
        if weights is not None:  # images where nothing counts are never drawn
            areas = np.array([float(w[0].sum()) for w in weights]) + 1e-9 * areas
        self._p = areas / areas.sum()

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def sample(self) -> tuple[torch.Tensor, ...]:
        """One batch, all from one image: x (B, C, P, P) float32, y (B, T, P, P) float32,
        and with ``weights`` also w (B, K, P, P) float32."""
        k = int(self.rng.choice(len(self.examples), p=self._p))
        image, target, norm = self._images[k], self._targets[k], self._normalizers[k]
        xs, ys = [], []
        for _ in range(self.batch_size):
            x, y = self._patch(image, target, norm, self._focus[k], self._binary[k])
            xs.append(x)
            ys.append(y)
        x = torch.from_numpy(np.stack(xs))
        y = torch.from_numpy(np.stack(ys))
        if self._weighted:
            n = self._n_weights
            return x, y[:, :-n].contiguous(), y[:, -n:].contiguous()
        return x, y

    def _patch(self, image: np.ndarray, target: np.ndarray, norm: Normalizer, focus: np.ndarray | None = None,
               binary: list[bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
        rng, aug, p = self.rng, self.aug, self.patch_size
        h, w = image.shape[:2]
        s = float(np.exp(rng.uniform(np.log(aug.scale[0]), np.log(aug.scale[1]))))
        ch, cw = min(h, max(8, int(round(p * s)))), min(w, max(8, int(round(p * s))))
        if focus is not None and rng.random() < self.focus_probability:
            # centred on a corrected pixel (jittered by a quarter patch), clipped to the image
            cy, cx = divmod(int(focus[rng.integers(focus.size)]), w)
            cy += int(rng.integers(-ch // 4, ch // 4 + 1))
            cx += int(rng.integers(-cw // 4, cw // 4 + 1))
            y0, x0 = min(max(0, cy - ch // 2), h - ch), min(max(0, cx - cw // 2), w - cw)
        else:
            y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        img = image[y0 : y0 + ch, x0 : x0 + cw]
        tgt = target[:, y0 : y0 + ch, x0 : x0 + cw]
        if aug.stain > 0 and img.ndim == 3:
            img = _stain_jitter(img, aug.stain, rng)
        x = norm(img)  # (C, ch, cw)
        x = _intensity_jitter(x, aug, rng)
        if (ch, cw) != (p, p):
            xt = torch.from_numpy(np.ascontiguousarray(x))[None]
            x = torch.nn.functional.interpolate(xt, size=(p, p), mode="bilinear", align_corners=False)[0].numpy()
            tt = torch.from_numpy(np.ascontiguousarray(tgt))[None]
            tgt = torch.nn.functional.interpolate(tt, size=(p, p), mode="bilinear", align_corners=False)[0].numpy()
            for c in range(tgt.shape[0]):
                if binary is None or binary[c]:
                    tgt[c] = tgt[c] > 0.5
        if aug.flips:
            k = int(rng.integers(4))
            x, tgt = np.rot90(x, k, axes=(1, 2)), np.rot90(tgt, k, axes=(1, 2))
            if rng.random() < 0.5:
                x, tgt = x[:, :, ::-1], tgt[:, :, ::-1]
        return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(tgt, dtype=np.float32)


class _SamplerStream(torch.utils.data.IterableDataset):
    """Endless batches of one PatchSampler; in a worker process the sampler (a copy) draws
    from its own random stream, seeded from the worker's torch seed (deterministic for a
    given ``torch.manual_seed``)."""

    def __init__(self, sampler: PatchSampler) -> None:
        self.sampler = sampler

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        if info is not None:
            self.sampler.rng = np.random.default_rng(info.seed % (1 << 63))
        while True:
            yield self.sampler.sample()


class ParallelSampler:
    """A :class:`PatchSampler` whose batches are cut and augmented by ``workers`` processes
    (a torch DataLoader), so the training process only runs the network: on a GPU, patch
    preparation (H&E stain jitter above all) is otherwise the bottleneck. Same interface as
    PatchSampler; ``close()`` stops the workers."""

    def __init__(self, sampler: PatchSampler, workers: int, *, pin_memory: bool = False) -> None:
        if workers < 1:
            raise ValueError(f"ParallelSampler needs at least one worker, not {workers}")
        self.sampler, self.workers, self.pin_memory = sampler, int(workers), pin_memory
        self._batches = None

    def sample(self) -> tuple[torch.Tensor, ...]:
        if self._batches is None:
            loader = torch.utils.data.DataLoader(_SamplerStream(self.sampler), batch_size=None,
                                                 num_workers=self.workers, prefetch_factor=4,
                                                 pin_memory=self.pin_memory)
            self._batches = iter(loader)
        return next(self._batches)

    def state(self) -> dict:
        return self.sampler.state()

    def set_state(self, state: dict) -> None:
        self.sampler.set_state(state)

    def close(self) -> None:
        """Stop the worker processes (they also stop when this object is garbage-collected)."""
        self._batches = None  # the DataLoader's iterator stops its workers when it is released


def _intensity_jitter(x: np.ndarray, aug: Augmentation, rng: np.random.Generator) -> np.ndarray:
    if aug.intensity <= 0:
        return x
    contrast = 1.0 + rng.uniform(-aug.intensity, aug.intensity)
    brightness = rng.uniform(-aug.intensity, aug.intensity)
    return (x * contrast + brightness * 2.0).astype(np.float32)


def _stain_jitter(rgb: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Perturb haematoxylin / eosin / DAB concentrations (uint8 RGB in, uint8 RGB out)."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(rgb)
    alpha = rng.uniform(1 - amount, 1 + amount, size=3)
    beta = rng.uniform(-amount, amount, size=3) * 0.1
    out = hed2rgb(hed * alpha + beta)
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)
