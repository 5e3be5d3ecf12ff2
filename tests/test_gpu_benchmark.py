"""benchmarks/gpu.py: its plumbing on the CPU (tiny sizes), its OOM fallback, and its clean
exit without CUDA. The GPU numbers themselves come from running it on a GPU machine."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def gpu_script():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("minenet_bench_gpu", BENCH / "gpu.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))


def test_runs_on_the_cpu_with_tiny_sizes(gpu_script, tmp_path):
    out = tmp_path / "gpu.json"
    data = gpu_script.main(["--device", "cpu", "--sizes", "96", "--tile-size", "64", "--overlap", "16",
                            "--precisions", "fp32", "bf16", "--batch-sizes", "1", "3", "--repeats", "1",
                            "--threads", "1", "--json", str(out)])
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(data["rows"]))
    rows = data["rows"]
    for precision in ("fp32", "bf16"):
        for batch in (1, 3):
            for kind in ("network", "predict_tiled", "segment"):
                match = [r for r in rows if r["kind"] == kind and r["precision"] == precision
                         and r["batch_requested"] == batch]
                assert len(match) == 1, (kind, precision, batch)
                row = match[0]
                assert "error" not in row, row
                assert row["seconds"] > 0 and row["mpx_s"] > 0
                assert row["gpu_peak_bytes"] is None  # no GPU: no GPU memory number is made up
    net = [r for r in rows if r["kind"] == "network" and r["batch"] == 3][0]
    assert net["mpx_s"] == pytest.approx(3 * 64 * 64 / 1e6 / net["seconds"])
    assert data["best_network"]["kind"] == "network"


def test_out_of_memory_halves_the_batch(gpu_script):
    calls = []

    def net(x):
        calls.append(x.shape[0])
        if x.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return x[:, :2]

    row = gpu_script.network_row(net, 64, 32, 4, "fp32", torch.device("cpu"), repeats=1)
    assert row["batch"] == 1 and row["mpx_s"] > 0
    assert row["note"] == "out of memory at batch 4; out of memory at batch 2"
    assert calls[:2] == [4, 2]

    def broken(x):
        raise RuntimeError("something else")

    assert "something else" in gpu_script.network_row(broken, 64, 32, 2, "fp32", torch.device("cpu"), 1)["error"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the script would measure it")
def test_without_cuda_it_says_so_and_measures_nothing(gpu_script, tmp_path):
    out = tmp_path / "gpu.json"
    data = gpu_script.main(["--json", str(out)])
    assert "no CUDA device" in data["skipped"] and "rows" not in data
    assert json.loads(out.read_text())["skipped"] == data["skipped"]
