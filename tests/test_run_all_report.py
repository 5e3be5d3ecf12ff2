"""benchmarks/run_all.py rewrites docs/benchmarks.md: sections written by hand (GPU, real H&E,
whole slides, cluster) must survive the rewrite."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import run_all  # noqa: E402

MARK = run_all.HAND_WRITTEN


def test_hand_written_sections_survive_a_rewrite():
    old = ("# Benchmarks\n\nold intro\n\n## Machine\n\nold machine\n\n"
           f"## GPU\n{MARK}\n\nH200: 361 Mpx/s\n\n## Whole slides\n{MARK}\n\n40,000^2 in 2 GB\n\n"
           "## Reproduce\n\nold commands\n")
    new = "# Benchmarks\n\nnew intro\n\n## Machine\n\nnew machine\n\n## GPU\n\nSkipped: no CUDA\n\n## Reproduce\n\nnew\n"
    merged = run_all.keep_hand_written(new, old)
    assert "new intro" in merged and "new machine" in merged and "old machine" not in merged
    assert "H200: 361 Mpx/s" in merged and "Skipped: no CUDA" not in merged  # kept in place of the generated one
    assert merged.index("## Whole slides") < merged.index("## Reproduce")  # a section it does not generate
    assert merged.index("## Machine") < merged.index("## GPU") < merged.index("## Whole slides")
    assert merged.count("## ") == 4 and merged.rstrip().endswith("new")


def test_without_an_old_report_the_new_one_is_written_as_is():
    new = "# B\n\n## Machine\n\nx\n"
    assert run_all.keep_hand_written(new, None) == new
    assert run_all.keep_hand_written(new, "# B\n\n## Machine\n\nold, not hand-written\n") == new


def test_the_repository_report_marks_its_hand_written_sections():
    text = (Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    marked = [h for h, body in run_all._sections(text) if MARK in body]
    assert {"## GPU", "## Whole slides", "## Whole slides on dask.distributed"} <= set(marked)
