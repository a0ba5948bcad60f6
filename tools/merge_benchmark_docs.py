"""Assemble docs/benchmarks.md from the per-benchmark sections in docs/benchmarks/*.md.

Each section keeps its own command and numbers; image links are rewritten to be relative to docs/.
Run: python tools/merge_benchmark_docs.py
"""

from __future__ import annotations

from pathlib import Path

ORDER = ["lm_throughput", "optim_step", "optim_quality", "autolrs", "zo_synthetic", "zo_finetune", "zo_memory",
         "prompt_opt", "rl_toy", "rl_grpo"]
HEADER = """# Benchmarks

Latest full results of every benchmark (`python -m benchmarks.NAME [--quick] [--out DIR] [--seeds N]`; each
writes `DIR/NAME.json` with all numbers, the machine, versions and the command, plus PNG plots). Each
section names the exact command that produced its numbers. Timings are ratios to a baseline measured in
the same run. Unless a section says otherwise, runs were made on a shared 2-core CPU machine (no GPU was
available), often while other jobs were running: absolute times are inflated and noisy.

`make bench-quick` runs every benchmark's `--quick` version.

Sections: {links}

"""


def main() -> None:
    root = Path(__file__).resolve().parents[1] / "docs"
    parts = []
    names = [n for n in ORDER if (root / "benchmarks" / f"{n}.md").exists()]
    names += sorted(p.stem for p in (root / "benchmarks").glob("*.md") if p.stem not in ORDER)
    for n in names:
        text = (root / "benchmarks" / f"{n}.md").read_text(encoding="utf-8").strip()
        text = text.replace("](../img/", "](img/")
        lines = text.splitlines()
        lines = ["#" + ln if ln.startswith("#") else ln for ln in lines]  # demote headings one level
        parts.append(f'<a id="{n}"></a>\n\n' + "\n".join(lines))
    links = ", ".join(f"[{n}](#{n})" for n in names)
    out = HEADER.format(links=links) + "\n\n".join(parts) + "\n"
    (root / "benchmarks.md").write_text(out, encoding="utf-8")
    print(f"wrote {root / 'benchmarks.md'} with {len(names)} sections")


if __name__ == "__main__":
    main()
