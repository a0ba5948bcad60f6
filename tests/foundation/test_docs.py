"""docs/benchmarks.md is assembled from docs/benchmarks/*.md: the committed file must match its sources."""

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_benchmarks_md_is_in_sync_with_its_sections():
    tool = runpy.run_path(str(ROOT / "tools" / "merge_benchmark_docs.py"))
    committed = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert tool["render"]() == committed, "run: python tools/merge_benchmark_docs.py"


def test_headings_in_code_blocks_are_not_demoted():
    tool = runpy.run_path(str(ROOT / "tools" / "merge_benchmark_docs.py"))
    assert tool["_demote"]("# A\n```\n# comment\n```\n## B") == "## A\n```\n# comment\n```\n### B"
