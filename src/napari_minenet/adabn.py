"""AdaBN: a network's BatchNorm statistics re-estimated on the pixels it is about to segment,
optionally tempered by the statistics it was trained with (the card's ``bn_prior``).

Used by :mod:`napari_minenet.inference` for every image (``bn_statistics == "image"``) and by
the slide engine once per piece of tissue; the ONNX export (:mod:`napari_minenet.export`) computes the
same statistics inside its graph.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["adapt_batchnorm"]


@torch.no_grad()
def adapt_batchnorm(network: nn.Module, batch: torch.Tensor, *, return_output: bool = False, prior: float = 0.0):
    """A copy of ``network`` whose BatchNorm statistics are those of ``batch`` (AdaBN).

    Every BatchNorm gets the mean and (biased) variance of its own input over (N, H, W)
    during one forward pass, which is exactly how BatchNorm normalises in training mode.
    The original network is not changed. With ``return_output`` the pass's output (the
    prediction for ``batch``) is returned too: ``(network, logits)``.

    ``prior`` (0 <= prior < 1) then blends in the statistics stored in ``network`` (those of
    its training images): each BatchNorm's mean and variance become those of the mixture
    ``(1 - prior) * batch + prior * stored`` (mean ``(1-p) m_b + p m_s``; variance
    ``(1-p) v_b + p v_s + p (1-p) (m_b - m_s)^2``), a shrinkage towards the source statistics
    as in Schneider et al., "Improving robustness against common corruptions by covariate
    shift adaptation" (NeurIPS 2020). Each layer's batch statistics are those of the ordinary
    AdaBN pass (every layer upstream normalised with the batch's own statistics), blended
    afterwards: measured on unseen H&E (TNBC), this is what helps; blending layer by layer
    during the pass (each layer's input already normalised with blended statistics) gave
    nothing (docs/results.md, "Normalisation statistics with a prior"). The logits returned with
    ``return_output`` are those of the pass itself, so with a prior they are ``None``.

    The pass runs the BatchNorms in training mode with momentum 1 (PyTorch's own kernel: the
    pass takes 1.55x less CPU than computing ``var_mean`` in hooks), then turns the stored
    unbiased variance back into the biased one that training mode normalised with.
    """
    if not 0.0 <= prior < 1.0:
        raise ValueError(f"prior must be from 0 up to (not including) 1, got {prior}")
    net = copy.deepcopy(network).to(batch.device).eval()
    if batch.device.type == "cpu":
        net = net.to(memory_format=torch.channels_last)
        batch = batch.contiguous(memory_format=torch.channels_last)
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    stored = {m: (m.running_mean.clone(), m.running_var.clone()) for m in norms} if prior > 0 else {}
    counts: dict[nn.Module, int] = {}

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        counts[module] = inputs[0].numel() // inputs[0].shape[1]

    handles = [m.register_forward_pre_hook(count) for m in norms]
    saved = [(m.momentum, m.track_running_stats) for m in norms]
    for m in norms:
        m.train()
        m.momentum, m.track_running_stats = 1.0, True
    try:
        out = net(batch)
    finally:
        for handle in handles:
            handle.remove()
        for m, (momentum, track) in zip(norms, saved):
            m.eval()
            m.momentum, m.track_running_stats = momentum, track
    for m in norms:
        n = counts.get(m, 0)
        if n > 1:
            m.running_var.mul_((n - 1) / n)
        if prior > 0:
            mean_s, var_s = stored[m]
            mean_b, var_b = m.running_mean.clone(), m.running_var.clone()
            m.running_mean.copy_((1 - prior) * mean_b + prior * mean_s)
            m.running_var.copy_((1 - prior) * var_b + prior * var_s + prior * (1 - prior) * (mean_b - mean_s) ** 2)
    if prior > 0:
        out = None  # (the pass normalised with the batch's statistics alone)
    return (net, out) if return_output else net
