"""One table of what differs by task: what the button says, how results are presented,
the training defaults a new card gets, and the augmentation its training uses.

Everything else reads it: the model card's display defaults (``zoo``), the training
defaults and a new model's card (``training``), augmentation (``patches.Augmentation.for_task``)
and the command line's ``--task`` choices. Fine-tuning's acceptance rule per task stays
with the rest of fine-tuning (``finetuning.config.JUDGE_RULES``).

A task name this table does not know gets the ``custom`` row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Task", "TASK_TABLE", "task"]


@dataclass(frozen=True)
class Task:
    name: str
    #: what the model picker, the button and the summaries say
    display_name: str
    button_text: str
    object_name: str
    #: one label per object (nuclei) or one label for everything found (vessels, lesions)
    instances: bool
    # ---- training defaults (TrainConfig fields left at None / -1 take these)
    #: a second output channel for object contours (separates touching objects)
    contours: bool
    patch_size: int
    #: resize images so their long side is this many pixels (None: native size)
    working_long_side: int | None
    # ---- post-processing a newly trained model's card gets
    min_size: int
    fill_holes: bool
    keep_largest: bool
    #: keyword arguments of patches.Augmentation that differ from its defaults
    augmentation: dict[str, Any] = field(default_factory=dict, hash=False)


TASK_TABLE: dict[str, Task] = {
    t.name: t
    for t in (
        Task("nuclei", "Nuclei (H&E)", "Segment nuclei", "nuclei", instances=True,
             contours=True, patch_size=256, working_long_side=None,
             min_size=10, fill_holes=True, keep_largest=False,
             augmentation={"stain": 0.05}),
        # fundus cameras differ in resolution but not in field of view: bring every image to
        # DRIVE's size (584 px long side) so vessel widths match what the model learned
        Task("vessels", "Retinal vessels", "Segment vessels", "vessels", instances=False,
             contours=False, patch_size=256, working_long_side=584,
             min_size=0, fill_holes=False, keep_largest=False),
        Task("lesion", "Skin lesion", "Segment lesion", "lesion", instances=False,
             contours=False, patch_size=192, working_long_side=256,
             min_size=0, fill_holes=True, keep_largest=True,
             augmentation={"scale": (0.8, 1.25), "intensity": 0.2}),
        Task("custom", "Custom", "Segment", "objects", instances=False,
             contours=False, patch_size=256, working_long_side=None,
             min_size=0, fill_holes=False, keep_largest=False),
    )
}


def task(name: str) -> Task:
    """The row of ``name``; the ``custom`` row for a task the table does not know."""
    return TASK_TABLE.get(name, TASK_TABLE["custom"])
