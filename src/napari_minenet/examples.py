"""Training examples made from the user's corrections, kept safe on disk.

An :class:`ExampleStore` is a folder in the dataset layout that ``train``, ``finetune`` and
``evaluate`` read::

    <folder>/images/<id>.tif      the image crop (as in the viewer: grey or RGB)
    <folder>/masks/<id>.png       corrected foreground, 0 / 255
    <folder>/labels/<id>.tif      corrected instance labels (uint32)
    <folder>/before/<id>.tif      the labels the model predicted before the corrections
                                  (uint32; where they differ from labels/ the user edited)
    <folder>/examples.json        index: where each crop came from, when, with which model

Every file is written atomically and the index last, so a crash at any moment leaves
every example that was listed readable, and at worst unlisted orphans (and temporary
files of an interrupted write) that are removed when the store is opened again. Ids in
the index must be plain names: an index that points outside its folder is refused, and
nothing outside the folder is ever read or deleted.
"""

from __future__ import annotations

import dataclasses
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
SUBFOLDERS = ("images", "masks", "labels", "before")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
#: labels are stored as uint32; larger ids cannot be kept
MAX_LABEL = np.iinfo(np.uint32).max


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
    #: whether before/<id>.tif holds the prediction the corrections were made on
    has_before: bool = False
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
        self._remove_leftovers()

    # ------------------------------------------------------------------ index

    def _read_index(self) -> list[ExampleRecord]:
        path = self.folder / INDEX
        if not path.is_file():
            return []
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))["examples"]
            fields = {f.name for f in dataclasses.fields(ExampleRecord)}
            records = [ExampleRecord(**{**{k: v for k, v in row.items() if k in fields},
                                        "box": tuple(row["box"]), "shape": tuple(row["shape"])}) for row in rows]
        except UnicodeDecodeError as exc:
            raise InputError(f"the examples index {path} is not UTF-8 text ({exc.reason}); the image/mask files "
                             "are intact") from exc
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"the examples index {path} is damaged ({exc}); the image/mask files are intact") from exc
        bad = [r.id for r in records if not isinstance(r.id, str) or not _ID.match(r.id)]
        if bad:
            raise InputError(f"the examples index {path} lists ids that are not plain names ({bad[0]!r}); it may "
                             "have been edited by hand. Nothing outside the folder is read or deleted; fix or "
                             "remove the index")
        return [r for r in records if self._files(r.id)[0].is_file() and self._files(r.id)[1].is_file()]

    def _remove_leftovers(self) -> None:
        """Delete what an interrupted write left behind: temporary files, and example files
        the index does not list (a crash between writing them and writing the index)."""
        # without an index this may be any folder in the dataset layout: only temporary
        # files are ours to remove there
        listed = None if not (self.folder / INDEX).is_file() else {r.id for r in self._records}
        for sub in SUBFOLDERS:
            folder = self.folder / sub
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                stale_tmp = path.name.startswith(".") and path.name.endswith(".tmp")
                orphan = (listed is not None and path.suffix in (".tif", ".png") and path.stem not in listed
                          and _ID.match(path.stem))
                if (stale_tmp or orphan) and path.is_file() and not path.is_symlink():
                    path.unlink(missing_ok=True)
        for path in self.folder.glob(f".{INDEX}*.tmp") if self.folder.is_dir() else ():
            path.unlink(missing_ok=True)

    def _write_index(self) -> None:
        atomic_write_json(self.folder / INDEX, {"version": 1, "examples": [asdict(r) for r in self._records]})

    def _files(self, ident: str) -> tuple[Path, Path, Path, Path]:
        if not _ID.match(ident):  # never a path outside the store
            raise InputError(f"{ident!r} is not an example id")
        return (self.folder / "images" / f"{ident}.tif", self.folder / "masks" / f"{ident}.png",
                self.folder / "labels" / f"{ident}.tif", self.folder / "before" / f"{ident}.tif")

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
        before: np.ndarray | None = None,
    ) -> ExampleRecord:
        """Save an (image crop, corrected labels) pair; returns its record.

        ``before``: the labels the model predicted on the crop before the user corrected
        them; fine-tuning learns from where the two differ (finetuning/from_corrections.py).
        """
        image = check_image(np.asarray(image), name="example image")
        labels = _checked_labels(labels, "labels")
        if labels.shape != image.shape[:2]:
            raise InputError(f"labels {labels.shape} and image {image.shape[:2]} differ in size")
        if min(labels.shape) < 32:
            raise InputError(f"an example must be at least 32 x 32 pixels, this one is {labels.shape[0]} x {labels.shape[1]}")
        if before is not None:
            before = _checked_labels(before, "labels before the corrections")
            if before.shape != labels.shape:
                raise InputError(f"labels before the corrections {before.shape} and after {labels.shape} differ in size")
        if box is None:
            box = (0, labels.shape[0], 0, labels.shape[1])
        ident = self._new_id(source)
        img_path, mask_path, lab_path, before_path = self._files(ident)
        write_png(mask_path, (labels > 0).astype(np.uint8) * 255)
        write_tiff(lab_path, labels)
        if before is not None:
            write_tiff(before_path, before)
        write_tiff(img_path, image)  # image last: an image on disk always has its mask
        record = ExampleRecord(
            id=ident, source=source, box=tuple(int(v) for v in box), shape=tuple(int(s) for s in image.shape),
            objects=int(len(np.unique(labels)) - (1 if (labels == 0).any() else 0)), edited_pixels=edited_pixels,
            model=model, created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), scale=scale,
            has_before=before is not None,
        )
        self._records.append(record)
        self._write_index()
        return record

    def remove(self, ident: str) -> None:
        """Forget an example and delete its files (only an id the index lists)."""
        if ident not in {r.id for r in self._records}:
            raise InputError(f"there is no example {ident!r} in {self.folder}")
        self._records = [r for r in self._records if r.id != ident]
        self._write_index()
        for path in self._files(ident):
            path.unlink(missing_ok=True)

    def load(self) -> list[TrainingExample]:
        """The listed examples as :class:`TrainingExample` (instance labels included)."""
        if not self._records:
            return []
        import tifffile

        examples = load_dataset(self.folder, ids=[r.id for r in self._records])
        for ex, record in zip(examples, self._records):
            ex.scale = record.scale
            path = self._files(record.id)[3]
            if record.has_before and path.is_file():
                before = tifffile.imread(path)
                if before.shape != ex.mask.shape:
                    raise InputError(f"example {record.id}: {path} is {before.shape}, the labels {ex.mask.shape}")
                ex.before = before
        return examples


def _checked_labels(labels, what: str) -> np.ndarray:
    """Labels as uint32, or a clear error: integer ids (or a 0/1 float or bool mask), not
    negative, not above 2**32 - 1, one plane."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise InputError(f"{what} must be one 2-D plane, got shape {labels.shape}")
    if labels.dtype == bool:
        return labels.astype(np.uint32)
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)):
        raise InputError(f"{what} must hold integer object ids, got {labels.dtype}")
    if np.issubdtype(labels.dtype, np.floating):
        if not np.isfinite(labels).all():
            raise InputError(f"{what} contain NaN or infinite values")
        if (labels != np.round(labels)).any():
            raise InputError(f"{what} must hold whole-number object ids, found fractions such as "
                             f"{labels[labels != np.round(labels)].flat[0]:g}")
    if labels.size and labels.min() < 0:
        raise InputError(f"{what} contain negative ids")
    if labels.size and labels.max() > MAX_LABEL:
        raise InputError(f"{what} contain ids above {MAX_LABEL} (the largest a label file holds)")
    return labels.astype(np.uint32)
