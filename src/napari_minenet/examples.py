"""Training examples made from the user's corrections, kept safe on disk.

An :class:`ExampleStore` is a folder in the dataset layout that ``train``, ``finetune`` and
``evaluate`` read::

    <folder>/images/<id>.tif      the image crop (as in the viewer: grey or RGB)
    <folder>/masks/<id>.png       corrected foreground, 0 / 255
    <folder>/labels/<id>.tif      corrected instance labels (uint32)
    <folder>/examples.json        index: where each crop came from, when, with which model

Every file is written atomically and the index last, so a crash at any moment leaves
every example that was listed readable, and at worst an unlisted orphan that is cleaned
up when the store is opened again.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .data import InputError, TrainingExample, check_image, load_dataset
from .files import atomic_write_json, write_png, write_tiff

__all__ = ["ExampleRecord", "ExampleStore", "default_examples_folder"]

INDEX = "examples.json"


@dataclass
class ExampleRecord:
    id: str
    source: str  # image file or layer name it was cut from
    box: tuple[int, int, int, int]  # (y0, y1, x0, x1) in the source image
    shape: tuple[int, ...]
    objects: int
    edited_pixels: int | None = None
    model: str = ""
    created: str = ""
    #: resize factor to the model's working size, from the whole image the crop came from
    #: (None when the model works at native resolution)
    scale: float | None = None
    extra: dict = field(default_factory=dict)


def default_examples_folder(image_path: str | os.PathLike | None, image_name: str) -> Path:
    """``<image folder>/<image name>_minenet_examples`` when the image came from a file,
    else a folder in the user's data directory."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", image_name).strip("_") or "image"
    if image_path:
        p = Path(image_path)
        folder = p.parent if p.suffix else p
        if os.access(folder, os.W_OK):
            return folder / f"{safe}_minenet_examples"
    from .zoo import user_models_dir

    return user_models_dir().parent / "examples" / safe


class ExampleStore:
    """The examples of one project folder."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._records: list[ExampleRecord] = self._read_index()

    # ------------------------------------------------------------------ index

    def _read_index(self) -> list[ExampleRecord]:
        path = self.folder / INDEX
        if not path.is_file():
            return []
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))["examples"]
            records = [ExampleRecord(**{**row, "box": tuple(row["box"]), "shape": tuple(row["shape"])}) for row in rows]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InputError(f"the examples index {path} is damaged ({exc}); the image/mask files are intact") from exc
        return [r for r in records if self._files(r.id)[0].is_file() and self._files(r.id)[1].is_file()]

    def _write_index(self) -> None:
        atomic_write_json(self.folder / INDEX, {"version": 1, "examples": [asdict(r) for r in self._records]})

    def _files(self, ident: str) -> tuple[Path, Path, Path]:
        return (self.folder / "images" / f"{ident}.tif", self.folder / "masks" / f"{ident}.png",
                self.folder / "labels" / f"{ident}.tif")

    # ------------------------------------------------------------------ public

    @property
    def records(self) -> list[ExampleRecord]:
        return list(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def _new_id(self, source: str) -> str:
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(source).stem if source else "example").strip("_")[:40] or "example"
        taken = {r.id for r in self._records}
        n = len(self._records) + 1
        while f"{stem}_{n:03d}" in taken or self._files(f"{stem}_{n:03d}")[0].exists():
            n += 1
        return f"{stem}_{n:03d}"

    def add(
        self,
        image: np.ndarray,
        labels: np.ndarray,
        *,
        source: str = "",
        box: tuple[int, int, int, int] | None = None,
        model: str = "",
        edited_pixels: int | None = None,
        scale: float | None = None,
    ) -> ExampleRecord:
        """Save an (image crop, corrected labels) pair; returns its record."""
        image = check_image(np.asarray(image), name="example image")
        labels = np.asarray(labels)
        if labels.shape != image.shape[:2]:
            raise InputError(f"labels {labels.shape} and image {image.shape[:2]} differ in size")
        if min(labels.shape) < 32:
            raise InputError(f"an example must be at least 32 x 32 pixels, this one is {labels.shape[0]} x {labels.shape[1]}")
        if box is None:
            box = (0, labels.shape[0], 0, labels.shape[1])
        ident = self._new_id(source)
        img_path, mask_path, lab_path = self._files(ident)
        write_png(mask_path, (labels > 0).astype(np.uint8) * 255)
        write_tiff(lab_path, labels.astype(np.uint32))
        write_tiff(img_path, image)  # image last: an image on disk always has its mask
        record = ExampleRecord(
            id=ident, source=source, box=tuple(int(v) for v in box), shape=tuple(int(s) for s in image.shape),
            objects=int(len(np.unique(labels)) - (1 if (labels == 0).any() else 0)), edited_pixels=edited_pixels,
            model=model, created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), scale=scale,
        )
        self._records.append(record)
        self._write_index()
        return record

    def remove(self, ident: str) -> None:
        """Forget an example and delete its files."""
        self._records = [r for r in self._records if r.id != ident]
        self._write_index()
        for path in self._files(ident):
            path.unlink(missing_ok=True)

    def load(self) -> list[TrainingExample]:
        """The listed examples as :class:`TrainingExample` (instance labels included)."""
        if not self._records:
            return []
        examples = load_dataset(self.folder, ids=[r.id for r in self._records])
        for ex, record in zip(examples, self._records):
            ex.scale = record.scale
        return examples
