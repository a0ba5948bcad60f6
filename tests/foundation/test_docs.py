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


def _python_blocks(text: str) -> list[str]:
    import re
    import textwrap

    return [textwrap.dedent(b) for b in re.findall(r"^[ \t]*```python\n(.*?)^[ \t]*```", text, re.S | re.M)]


def _undefined_classes(source: str) -> set[str]:
    """Capitalised names a block reads but never imports or assigns (lower-case ones such as ``model`` are the
    reader's own objects by convention)."""
    import ast
    import builtins

    tree = ast.parse(source)
    defined, used = set(dir(builtins)), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            defined.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Name):
            (defined if isinstance(node.ctx, ast.Store) else used).add(node.id)
    return {n for n in used - defined if n[:1].isupper()}


def test_every_documented_python_block_imports_what_it_uses():
    missing = {}
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, block in enumerate(_python_blocks(doc.read_text(encoding="utf-8"))):
            names = _undefined_classes(block)
            if names:
                missing[f"{doc.relative_to(ROOT)} block {i}"] = sorted(names)
    assert not missing, f"add the imports to these code blocks: {missing}"


def test_the_import_check_sees_a_missing_import():
    assert _undefined_classes("from lmopt.lm import LM\nlm = LM(LocalLM())\n") == {"LocalLM"}
    assert _python_blocks("* item:\n  ```python\n  x = 1\n  ```\n") == ["x = 1\n"]
