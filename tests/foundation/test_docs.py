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


def _docs_tool():
    return runpy.run_path(str(ROOT / "tools" / "docs_check.py"))


def _undefined_classes(source: str) -> set[str]:
    """Capitalised names a block reads but never imports or assigns (lower-case ones such as ``model`` are the
    reader's own objects by convention)."""
    free, _ = _docs_tool()["analyse"](source)
    return {n for n in free if n[:1].isupper()}


def test_every_documented_python_block_imports_what_it_uses():
    tool = _docs_tool()
    missing = {}
    for doc in tool["documents"](ROOT):
        for b in tool["blocks_of"](doc, ROOT):
            names = {n for n in b.free_names if n[:1].isupper()}
            if names:
                missing[f"{b.doc}:{b.line}"] = sorted(names)
    assert not missing, f"add the imports to these code blocks: {missing}"


def test_the_import_check_sees_a_missing_import():
    assert _undefined_classes("from lmopt.lm import LM\nlm = LM(LocalLM())\n") == {"LocalLM"}


def test_docs_check_tells_examples_from_fragments(tmp_path):
    tool = _docs_tool()
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(
        "* item:\n  ```python\n  import math\n  print(math.pi)\n  ```\n"
        "```python\nopt.step(model)\n```\n"
        "```python\ncfg = dict(a=...)\n```\n"
        "```python\n# needs: a server on localhost:8000\nimport json\n```\n"
        "```python\n# runtime: about 2 min\nfor i in range(3):\n    print(i)\n```\n")
    blocks = tool["blocks_of"](tmp_path / "README.md", tmp_path)
    assert [b.complete for b in blocks] == [True, False, False, False, True]
    assert blocks[0].source == "import math\nprint(math.pi)\n" and blocks[0].line == 2
    assert blocks[1].free_names == ["model", "opt"]
    assert blocks[2].has_ellipsis and blocks[2].free_names == []
    assert blocks[3].needs == "a server on localhost:8000"
    assert blocks[0].limit(60) == 60 and blocks[4].limit(60) == 180


def test_docs_check_runs_a_block_and_reports_its_failure():
    tool = _docs_tool()
    ok = tool["Block"]("x.md", 0, 1, "print('hi')\n")
    bad = tool["Block"]("x.md", 1, 5, "import sys\nprint('boom', file=sys.stderr)\nsys.exit(3)\n")
    r_ok, r_bad = tool["run_block"](ok, timeout=60), tool["run_block"](bad, timeout=60)
    assert r_ok["status"] == "ok" and r_ok["output"].strip() == "hi"
    assert r_bad["status"] == "failed" and r_bad["returncode"] == 3 and "boom" in r_bad["output"]
    slow = tool["run_block"](tool["Block"]("x.md", 2, 9, "import time\ntime.sleep(30)\n"), timeout=1)
    assert slow["status"] == "timeout"
