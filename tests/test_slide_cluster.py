"""Whole slides on dask.distributed: the same block graph on a LocalCluster of worker
processes gives the threaded engine's labels, workers load the network once per run, a
worker killed in the middle of a block changes nothing, and a killed CLI run resumes.

One small slide (1,024^2 px, one IHC tile on glass, 16 blocks of 256 px) and one
LocalCluster of two single-threaded worker processes for the module.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

distributed = pytest.importorskip("distributed")

from napari_minenet.slide_blocks import worker_loads  # noqa: E402
from napari_minenet.slide_engine import LABELS_PATH, SlideOptions, segment_slide  # noqa: E402
from napari_minenet.slide_samples import tissue_layout, write_slide_tiff  # noqa: E402

BLOCK = SlideOptions(block_size=256)  # the CLI's halo (192), so the CLI runs compare too


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    import skimage.data

    layout = tissue_layout((1024, 1024), [skimage.data.immunohistochemistry()], 0.25, origin=(256, 300))
    return write_slide_tiff(tmp_path_factory.mktemp("cluster") / "one.tif", layout, mpp=0.5, min_level_side=256)


@pytest.fixture(scope="module")
def threaded(slide, tmp_path_factory):
    """The local threaded engine's result: the reference every cluster run must equal."""
    out = tmp_path_factory.mktemp("threads")
    result = segment_slide(slide, "nuclei", out / "one.zarr", options=BLOCK, geojson=out / "one.geojson")
    return _labels(out / "one.zarr"), (out / "one.geojson").read_text(), result


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        with distributed.Client(cluster) as c:
            yield c


def _labels(zarr_path: Path) -> np.ndarray:
    return np.asarray(zarr.open_array(str(zarr_path / LABELS_PATH / "0"), mode="r")[...])


def test_a_local_cluster_gives_the_threaded_labels_and_loads_the_network_once_per_worker(
        slide, threaded, client, tmp_path):
    labels, geojson, reference = threaded
    before, here = client.run(worker_loads), worker_loads()
    seen = []
    result = segment_slide(slide, "nuclei", tmp_path / "one.zarr", options=BLOCK, geojson=tmp_path / "one.geojson",
                           scheduler=client, progress=lambda done, total: seen.append((done, total)))
    loads = {w: n - before.get(w, 0) for w, n in client.run(worker_loads).items()}
    assert result.blocks_computed == reference.blocks_tissue >= 10 and result.count == reference.count > 100
    assert np.array_equal(_labels(tmp_path / "one.zarr"), labels)
    assert (tmp_path / "one.geojson").read_text() == geojson
    # one load per worker process that computed blocks, not one per block
    assert sum(loads.values()) >= 1 and max(loads.values()) == 1, loads
    assert seen[-1] == (result.blocks_tissue, result.blocks_tissue)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)  # progress counts up, block by block
    assert worker_loads() == here  # the client process computed no block


def test_cancel_stops_the_cluster_blocks_and_a_rerun_resumes(slide, threaded, client, tmp_path):
    from napari_minenet.inference import Cancelled

    labels, _, reference = threaded
    out, seen = tmp_path / "one.zarr", []
    with pytest.raises(Cancelled):
        segment_slide(slide, "nuclei", out, options=BLOCK, scheduler=client,
                      progress=lambda done, total: seen.append(done), cancel=lambda: len(seen) > 3)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(client.processing().values()):
        time.sleep(0.1)
    assert not any(client.processing().values())  # the unfinished blocks were cancelled on the cluster
    finished = len(list((tmp_path / ".one.zarr.work" / "blocks").glob("*.npz")))
    assert 3 <= finished < reference.blocks_tissue
    result = segment_slide(slide, "nuclei", out, options=BLOCK, scheduler=client)
    # (a block already running when cancelled may still finish: a cancelled task's thread is not interrupted)
    assert finished <= result.blocks_resumed <= finished + 2 < reference.blocks_tissue
    assert result.blocks_resumed + result.blocks_computed == reference.blocks_tissue
    assert np.array_equal(_labels(out), labels)


class KillOnce(distributed.WorkerPlugin):
    """Kills its own worker process (SIGKILL) 20 ms after a block starts there, once per
    test (an exclusive flag file), after ``after`` blocks of the run have finished; writes
    the block's key and whether its table existed at the kill into the flag file."""

    def __init__(self, flag: str, blocks: str, after: int) -> None:
        self.flag, self.blocks, self.after = flag, blocks, after

    def transition(self, key, start, finish, **kwargs):
        import threading

        name = key if isinstance(key, str) else str(key)
        if finish != "executing" or not name.startswith("minenet-block-"):
            return
        if len(list(Path(self.blocks).glob("*.npz"))) < self.after:
            return
        try:
            fd = os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        table = Path(self.blocks) / ("_".join(name.rsplit("-", 2)[1:]) + ".npz")

        def kill():
            os.write(fd, f"{name} {'done' if table.exists() else 'mid-block'}".encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)

        # (0.2 s was long enough for a 256 px block to finish once inference ran in place)
        threading.Timer(0.02, kill).start()


def test_a_worker_killed_in_the_middle_of_a_block_changes_no_label(slide, threaded, client, tmp_path):
    import cloudpickle

    labels, geojson, reference = threaded
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import this test module
    flag = tmp_path / "killed"
    out = tmp_path / "one.zarr"
    client.register_plugin(KillOnce(str(flag), str(tmp_path / ".one.zarr.work" / "blocks"), after=2),
                           name="kill-once")
    try:
        workers_before = set(client.scheduler_info()["workers"])
        result = segment_slide(slide, "nuclei", out, options=BLOCK, geojson=tmp_path / "one.geojson",
                               scheduler=client)
    finally:
        client.unregister_worker_plugin("kill-once")
    key, state = flag.read_text().split()
    assert state == "mid-block", key  # the worker died while computing a block, before its table
    assert set(client.scheduler_info()["workers"]) != workers_before  # one worker is new (restarted by its nanny)
    assert result.blocks_computed == reference.blocks_tissue
    assert np.array_equal(_labels(out), labels)
    assert (tmp_path / "one.geojson").read_text() == geojson


def test_a_block_whose_table_was_not_written_is_not_done(slide, threaded, tmp_path, monkeypatch):
    """A failure after a block's labels were written but before its table (the "done"
    marker) was complete: the rerun computes that block again instead of reading it."""
    from napari_minenet.slide_export import ObjectTable

    labels, geojson, reference = threaded
    save, calls, failed = ObjectTable.save, [], []

    def fail_once(table, path):  # on the first block with nuclei after three saved tables
        calls.append(path)
        if len(calls) > 3 and len(table) and len(calls) == len(set(calls)) and not failed:
            failed.append(path)
            path.with_name(f".{path.name}.1.tmp").write_bytes(b"PK\x03\x04 half a table")
            raise OSError(28, "No space left on device")
        save(table, path)

    monkeypatch.setattr(ObjectTable, "save", fail_once)
    out = tmp_path / "one.zarr"
    with pytest.raises(OSError, match="No space"):
        segment_slide(slide, "nuclei", out, options=BLOCK)
    monkeypatch.setattr(ObjectTable, "save", save)
    [failed] = failed
    done = len(calls) - 1
    by, bx = (int(v) for v in failed.stem.split("_"))
    anchors = zarr.open_array(str(tmp_path / ".one.zarr.work" / "anchors"), mode="r")
    assert np.asarray(anchors[by * 256 : by * 256 + 256, bx * 256 : bx * 256 + 256]).any()  # its labels were written
    assert not failed.exists() and len(list(failed.parent.glob("*.npz"))) == done >= 3
    result = segment_slide(slide, "nuclei", out, options=BLOCK, geojson=tmp_path / "one.geojson")
    assert result.blocks_resumed == done and result.blocks_computed == reference.blocks_tissue - done
    assert np.array_equal(_labels(out), labels) and (tmp_path / "one.geojson").read_text() == geojson


def _cli(args, **kwargs):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "napari_minenet.cli", "segment", *args], env=env, **kwargs)


def test_a_killed_cluster_run_of_the_cli_resumes_on_a_running_scheduler(slide, threaded, client, tmp_path):
    """``--scheduler local --workers 2``, killed with its workers (the process group) after
    three blocks; the rerun, on the folder and on an existing scheduler's address, resumes
    from the finished blocks and gives the threaded engine's labels."""
    labels, _, reference = threaded
    out = tmp_path / "out"
    proc = _cli([str(slide), "-o", str(out), "--block-size", "256", "--scheduler", "local", "--workers", "2"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    blocks = out / ".one.zarr.work" / "blocks"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(blocks.glob("*.npz"))) < 3 and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its LocalCluster's nannies and workers
    proc.wait()
    time.sleep(0.5)
    finished = len(list(blocks.glob("*.npz")))
    assert 3 <= finished < reference.blocks_tissue and not (out / "one.zarr" / "labels").exists()
    rerun = _cli([str(slide.parent), "-o", str(out), "--block-size", "256", "--scheduler", client.scheduler.address],
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr
    resumed = int(stdout.split("resumed ")[1].split()[0])
    assert resumed >= finished, stdout  # (a block or two may have finished while the group was killed)
    assert f"dask scheduler {client.scheduler.address}" in stderr
    assert np.array_equal(_labels(out / "one.zarr"), labels)
    assert (out / "one_nuclei.geojson").exists() and (out / "one_measurements.csv").exists()


def test_folders_expand_to_the_slides_inside(slide, tmp_path):
    from napari_minenet.cli.segment import expand_folders

    (tmp_path / "small.png").write_bytes(b"")
    (tmp_path / "image.zarr").mkdir()  # an OME-Zarr folder is a slide itself, not a folder of slides
    assert expand_folders([str(slide.parent)]) == [str(slide)]
    assert expand_folders([str(tmp_path / "image.zarr"), str(slide)]) == [str(tmp_path / "image.zarr"), str(slide)]
    with pytest.raises(ValueError, match="no whole slides"):
        expand_folders([str(tmp_path / "nothing")] if (tmp_path / "nothing").mkdir() is None else [])


def test_a_bad_scheduler_is_refused_with_its_reason(slide, tmp_path):
    from napari_minenet.slide_cluster import connect

    with pytest.raises(ValueError, match="scheduler"):
        with connect(""):
            pass
    with pytest.raises(OSError, match="cannot reach the dask scheduler"):
        with connect("tcp://127.0.0.1:9", timeout="1s"):
            pass
