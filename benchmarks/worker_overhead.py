"""Does running in a napari thread worker slow torch down? (micro-sam issue #740)

Measures, in one process with a real napari viewer (run under a display or
``xvfb-run -a python benchmarks/worker_overhead.py``):

* ``segment`` of the same image called directly on the main thread vs. inside a
  ``napari.qt.threading.create_worker`` FunctionWorker (the widget's path), with the
  progress callback relayed through a Qt signal as the widget does;
* fine-tuning steps per second directly vs. inside a GeneratorWorker (the widget's path).

Reports medians and the worker / direct ratio. A ratio above ~1.1 would need a fix
(thread count, GIL-holding per-tile work, event flooding, or a child process).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--finetune-seconds", type=float, default=15.0)
    parser.add_argument("--json")
    args = parser.parse_args()

    import napari
    from napari.qt.threading import create_worker
    from qtpy.QtWidgets import QApplication

    from napari_minenet._qt_common import Relay
    from napari_minenet.data import TrainingExample
    from napari_minenet.finetuning import FinetuneConfig, finetune
    from napari_minenet.segmentation import segment
    from napari_minenet.zoo import ModelCard, SegmentationModel, load_model

    try:
        model = load_model("nuclei")
        model_note = "built-in nuclei model"
    except Exception:  # noqa: BLE001
        model = SegmentationModel.new(ModelCard(name="untrained", task="nuclei", out_channels=2, instances=True))
        model_note = "untrained nuclei-shaped model (speed does not depend on training)"
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)
    image[::7] //= 2

    viewer = napari.Viewer(show=True)
    viewer.add_image(image, rgb=True)
    app = QApplication.instance()

    def direct() -> float:
        t0 = time.perf_counter()
        segment(image, model, device="cpu", progress=lambda d, t: None)
        return time.perf_counter() - t0

    def in_worker() -> float:
        relay = Relay()
        ticks = []
        relay.progressed.connect(lambda d, t: ticks.append(d))
        box = {}
        worker = create_worker(lambda: segment(image, model, device="cpu", progress=relay.progressed.emit))
        worker.returned.connect(lambda r: box.setdefault("r", r))
        t0 = time.perf_counter()
        worker.start()
        while "r" not in box:
            app.processEvents()
            time.sleep(0.002)
        return time.perf_counter() - t0

    direct()  # warm-up
    seg_direct = [direct() for _ in range(args.repeats)]
    seg_worker = [in_worker() for _ in range(args.repeats)]

    from skimage.draw import disk

    examples = []
    for i in range(2):
        img = np.full((512, 512, 3), 225, np.uint8)
        lab = np.zeros((512, 512), np.uint32)
        for k in range(1, 120):
            r, c = rng.integers(10, 502, 2)
            rr, cc = disk((r, c), 7, shape=lab.shape)
            img[rr, cc] = (90, 60, 150)
            lab[rr, cc] = k
        examples.append(TrainingExample(f"e{i}", img, lab > 0, lab))
    cfg = FinetuneConfig(max_seconds=args.finetune_seconds, device="cpu")

    def steps_per_s(records) -> float:
        steps = [r for r in records if r.kind == "step"]
        if len(steps) < 3:
            return float("nan")
        return (len(steps) - 1) / (steps[-1].elapsed - steps[0].elapsed)

    def ft_direct() -> float:
        return steps_per_s(list(finetune(model, examples, cfg, output="/tmp/worker-overhead-direct")))

    def ft_worker() -> float:
        records, done = [], {}
        worker = create_worker(finetune, model, examples, cfg, output="/tmp/worker-overhead-worker")
        worker.yielded.connect(records.append)
        worker.finished.connect(lambda: done.setdefault("x", 1))
        worker.start()
        while "x" not in done:
            app.processEvents()
            time.sleep(0.002)
        return steps_per_s(records)

    ft_d = ft_direct()
    ft_w = ft_worker()
    viewer.close()

    report = {
        "model": model_note,
        "image": f"{args.size} x {args.size} RGB",
        "torch_threads": torch.get_num_threads(),
        "segment_direct_s": seg_direct,
        "segment_worker_s": seg_worker,
        "segment_ratio_worker_over_direct": statistics.median(seg_worker) / statistics.median(seg_direct),
        "finetune_steps_per_s_direct": ft_d,
        "finetune_steps_per_s_worker": ft_w,
        "finetune_ratio_direct_over_worker": ft_d / ft_w if ft_w else float("nan"),
    }
    print(f"{model_note}; {report['image']}; torch threads {report['torch_threads']}")
    print(f"segment: direct median {statistics.median(seg_direct):.3f} s, worker median "
          f"{statistics.median(seg_worker):.3f} s, worker/direct = {report['segment_ratio_worker_over_direct']:.3f}")
    print(f"fine-tune: direct {ft_d:.2f} steps/s, worker {ft_w:.2f} steps/s, "
          f"direct/worker = {report['finetune_ratio_direct_over_worker']:.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
