"""The learning loop as a person drives it, in a real napari window (run under Xvfb).

For each of n images (other slides than the scored ones): open it, click "Segment", paint
the simulated user's corrections into the Labels layer with ``layer.data_setitem`` (as the
brush does: paint missed nuclei, erase false ones, split merges), click "Add as training
example" (whole image). Then click "Fine-tune" with the default budget and wait for the
answer. Reported: seconds from the click to the answer, training steps per second in the
window and, in the same process right after, headless ``finetune`` on the same examples
with the same settings (their ratio is what the GUI costs the trainer), whether the version
was kept, and F1 / AJI of the parent and of the candidate on the dataset's other images.

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/gui_finetune.py \\
        --data ../shared/data/tnbc/train --k 20 --images 2 --seed 0 --json docs/quality/gui_finetune_tnbc.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from simulated_user import choose_images  # noqa: E402

from napari_minenet.data import load_dataset  # noqa: E402
from napari_minenet.evaluation import evaluate_examples  # noqa: E402
from napari_minenet.finetuning import FinetuneConfig, finetune  # noqa: E402
from napari_minenet.simulated_user import simulate_corrections  # noqa: E402
from napari_minenet.training import run_to_end  # noqa: E402
from napari_minenet.zoo import load_model  # noqa: E402


def wait_for(signal, timeout_s: float) -> list:
    """Run the Qt event loop (as napari does) until ``signal`` fires; returns its arguments."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop, got = QEventLoop(), []

    def done(*args):
        got.append(args)
        loop.quit()

    signal.connect(done)
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec()
    signal.disconnect(done)
    if not got:
        raise TimeoutError(f"nothing happened within {timeout_s} s")
    return got[0]


def wait_until(predicate, timeout_s: float) -> None:
    """Process Qt events until ``predicate()`` holds (a person waits for the widget too)."""
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + timeout_s
    while not predicate():
        if time.perf_counter() > end:
            raise TimeoutError(f"the widget was still busy after {timeout_s} s")
        QApplication.processEvents()
        time.sleep(0.01)


def paint_corrections(layer, corrected: np.ndarray) -> int:
    """Write the corrected labels into the layer the way the brush does (one stroke per
    correction, through ``data_setitem`` so napari records it as a paint)."""
    before = np.asarray(layer.data)
    changed = before != corrected
    strokes = 0
    values = np.unique(corrected[changed])
    for value in values:
        where = np.nonzero(changed & (corrected == value))
        layer.data_setitem(where, int(value))
        strokes += 1
    return strokes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="nuclei")
    ap.add_argument("--k", type=int, default=20, help="corrections per image")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-eval", type=int, default=0)
    ap.add_argument("--screenshot", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import napari

    from napari_minenet._widget import MiniNetWidget

    examples = load_dataset(args.data)
    chosen, rest = choose_images(examples, args.images, args.seed, "slide", args.k)
    if args.max_eval:
        rest = rest[: args.max_eval]
    viewer = napari.Viewer(show=True)
    widget = MiniNetWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Mini-Net", area="right")
    seg, learn = widget.segment_panel, widget.learn_panel
    seg.model_picker.refresh(select=str(load_model(args.model).path))
    folder = Path(tempfile.mkdtemp(prefix="minenet-gui-")) / "examples"
    edits = []
    for ex in chosen:
        layer = viewer.add_image(ex.image, name=ex.id, rgb=True)
        viewer.layers.selection.active = layer
        wait_until(lambda: seg.worker is None, 600)  # the previous segmentation has fully finished
        seg.run_button.click()
        (labels_layer,) = wait_for(seg.segmented, 600)
        truth = ex.labels if seg.result.instances else ex.mask.astype(np.uint32)
        corrected, kinds = simulate_corrections(np.asarray(labels_layer.data), truth, args.k,
                                                prob=seg.result.probability, instances=seg.result.instances)
        strokes = paint_corrections(labels_layer, corrected)
        edits.append({"image": ex.id, "corrections": kinds, "strokes": strokes})
        if not learn.store:
            learn.open_store(folder)
        learn.scope_combo.setCurrentIndex(learn.scope_combo.findData("image"))
        learn.add_button.click()
        print(f"{ex.id}: {len(kinds)} corrections painted ({', '.join(sorted(set(kinds)))}); "
              f"{learn.edited_label.text()}", flush=True)

    parent = seg.model
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    learn.finetune_button.click()
    (result,) = wait_for(learn.finetuned, 900)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    gui_rate = result.steps / max(result.seconds, 1e-9)
    print(f"GUI: {result.steps} steps in {result.seconds:.1f} s of training ({gui_rate:.2f} steps/s), answer "
          f"{wall:.1f} s after the click, process CPU {cpu:.1f} s; {'KEPT' if result.accepted else 'not kept'}: "
          f"{result.reason}", flush=True)
    if args.screenshot:
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(args.screenshot), canvas_only=False)

    t1 = time.perf_counter()
    headless = run_to_end(finetune(parent, learn.store.load(), FinetuneConfig(), output=folder.parent / "headless"))
    headless_rate = headless.steps / max(headless.seconds, 1e-9)
    print(f"headless: {headless.steps} steps in {headless.seconds:.1f} s ({headless_rate:.2f} steps/s), "
          f"{time.perf_counter() - t1:.1f} s in all; GUI / headless = {gui_rate / headless_rate:.2f}", flush=True)

    before = evaluate_examples(rest, parent)[0]
    after = evaluate_examples(rest, result.model)[0]
    print(f"other images ({len(rest)}): F1 {before['f1']:.4f} -> {after['f1']:.4f}"
          + (f", AJI {before['aji']:.4f} -> {after['aji']:.4f}" if "aji" in before else ""), flush=True)
    report = {
        "data": args.data, "model": args.model, "seed": args.seed, "edits": edits, "torch_threads":
        torch.get_num_threads(), "click_to_answer_s": round(wall, 1), "accepted": result.accepted,
        "reason": result.reason, "gui": {"steps": result.steps, "train_s": round(result.seconds, 1),
                                         "steps_per_s": gui_rate, "process_cpu_s": round(cpu, 1)},
        "headless": {"steps": headless.steps, "train_s": round(headless.seconds, 1), "steps_per_s": headless_rate,
                     "accepted": headless.accepted},
        "gui_over_headless": gui_rate / headless_rate, "eval_images": len(rest),
        "parent": before, "candidate": after, "kept": after if result.accepted else before,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    viewer.close()


if __name__ == "__main__":
    main()
