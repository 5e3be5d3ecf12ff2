"""Training checkpoints: everything needed to resume a run, as safetensors + JSON (never a
pickle), written atomically after every epoch by ``training.fit``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .files import atomic_write_bytes, atomic_write_json

__all__ = ["save_checkpoint", "load_checkpoint", "restore_optimizer", "sub_state"]


def _state_tensors(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in state.items()}


def save_checkpoint(path: Path, *, network: nn.Module, best_state: dict, optimizer: torch.optim.Optimizer,
                    meta: dict[str, Any]) -> None:
    """Everything needed to resume, as safetensors + JSON (no pickle), written atomically."""
    from safetensors.torch import save as st_save

    tensors = _state_tensors("model", network.state_dict())
    tensors.update(_state_tensors("best", best_state))
    opt = optimizer.state_dict()
    for idx, st in opt["state"].items():
        for key, value in st.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = dict(meta, param_groups=opt["param_groups"])
    # the JSON lives inside the tensors file too: the .safetensors alone is a consistent
    # checkpoint even if a crash separates it from the readable .json copy
    blob = st_save(tensors, metadata={"minenet_checkpoint": json.dumps(meta)})
    atomic_write_bytes(path.with_name(path.name + ".safetensors"), blob)
    atomic_write_json(path.with_name(path.name + ".json"), meta)


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    base = Path(str(path).removesuffix(".safetensors").removesuffix(".json"))
    tensors_path = base.with_name(base.name + ".safetensors")
    if not tensors_path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {tensors_path}")
    with safe_open(str(tensors_path), framework="pt") as fh:
        meta_text = (fh.metadata() or {}).get("minenet_checkpoint")
    if meta_text is None:
        raise ValueError(f"{tensors_path} is not a napari-minenet training checkpoint")
    return load_file(str(tensors_path)), json.loads(meta_text)


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def sub_state(tensors: dict, prefix: str) -> dict:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
