"""The allocator settings: glibc keeps freed tile buffers instead of faulting new pages in for
every tile; the user's own settings and an opt-out win; a no-op off glibc."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from napari_minenet import allocator

_CHILD = r"""
import ctypes, json, resource, sys
from napari_minenet import allocator
applied = allocator.keep_freed_buffers() if sys.argv[1] == "tuned" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 20 << 20  # like a tile's activations: under the mmap threshold, ~100 MiB at a time
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [libc.malloc(size) for _ in range(5)]
    for b in blocks:
        ctypes.memset(b, 1, size)
    for b in blocks:
        libc.free(b)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "again": allocator.keep_freed_buffers() if applied else None,
                  "faults": faults[2:]}))
"""


def _child(mode: str, **env) -> dict:
    environment = {k: v for k, v in os.environ.items() if k not in allocator._USER_SETTINGS
                   and k != "NAPARI_MINENET_MALLOC"}
    environment.update(env)
    out = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, env=environment,
                         timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


glibc_only = pytest.mark.skipif(allocator._MALLOPT is None, reason="the C library is not glibc")


@glibc_only
def test_freed_buffers_are_kept_instead_of_faulted_in_again():
    default, tuned = _child("default"), _child("tuned")
    assert tuned["applied"] is True and tuned["again"] is True
    if sum(default["faults"]) < 4000:  # (transparent huge pages, or a glibc that keeps them anyway)
        pytest.skip(f"this system's default allocator already keeps them: {default['faults']}")
    assert sum(tuned["faults"]) * 4 < sum(default["faults"]), (tuned, default)


@glibc_only
@pytest.mark.parametrize("env", [{"NAPARI_MINENET_MALLOC": "default"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
                                 {"MALLOC_TRIM_THRESHOLD_": "1000000"}])
def test_the_users_settings_and_the_opt_out_win(env):
    assert _child("tuned", **env)["applied"] is False


def test_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(allocator, "_MALLOPT", None)
    monkeypatch.setattr(allocator, "_MALLOC_TRIM", None)
    monkeypatch.setattr(allocator, "_applied", None)
    assert allocator.keep_freed_buffers() is False
    allocator.release_memory()  # nothing to trim, no error
