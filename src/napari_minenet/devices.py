"""Devices: which one ``auto`` means (CUDA, else Apple MPS, else the CPU) and what was found."""

from __future__ import annotations

import os

import torch

__all__ = ["select_device", "device_report", "usable_cores"]


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def select_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> CUDA if available, else MPS, else CPU. Explicit requests are checked."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").lower()
    if name in ("gpu",):
        name = "cuda"
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("a CUDA GPU was requested but none is available (this torch build: "
                               f"{torch.__version__}); use device 'cpu' or 'auto'")
        return torch.device(name)
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise RuntimeError("Apple MPS was requested but is not available; use 'cpu' or 'auto'")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or mps")


def device_report() -> dict[str, str]:
    """Human-readable description of the devices found (for the widget and the CLI)."""
    found = {"cpu": f"CPU ({torch.get_num_threads()} threads)"}
    if torch.cuda.is_available():
        found["cuda"] = f"GPU: {torch.cuda.get_device_name(0)}"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found["mps"] = "GPU: Apple MPS"
    return found
