"""Assemble docs/benchmarks.md from the per-benchmark sections in docs/benchmarks/*.md.

Each section keeps its own command and numbers; image links are rewritten to be relative to docs/.
Run: python tools/merge_benchmark_docs.py
"""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
ORDER = ["lm_throughput", "optim_step", "optim_quality", "autolrs", "zo_synthetic", "zo_finetune", "zo_memory",
         "prompt_opt", "rl_toy", "rl_small", "rl_grpo", "preference", "modeling", "bo", "promst", "fed", "finetune"]
HEADER = """# Benchmarks

Latest full results of every benchmark (`python -m benchmarks.NAME [--quick] [--out DIR] [--seeds N]`; each
writes `DIR/NAME.json` with all numbers, the machine, versions and the command, plus PNG plots). Each
section names the exact command that produced its numbers. Timings are ratios to a baseline measured in
the same run. Unless a section says otherwise, runs were made on a shared 2-core CPU machine (no GPU was
available), often while other jobs were running: absolute times are inflated and noisy.

`make bench-quick` runs every benchmark's `--quick` version.

## How the benchmarks are run

- One benchmark at a time, with nothing else heavy on the machine (no tests or other benchmarks in
  parallel): on 2 cores, parallel jobs made timings 5-20x slower. Every `NAME.json` records the load
  average before and after the run (`load_average`) and the torch thread count (`machine.torch_threads`),
  so a noisy measurement shows.
- Comparisons run side by side in one process on the same budget (steps, queries, LM calls), over several
  seeds, reported as median and range; a timing is a ratio to its baseline measured in the same run.
- A tuned hyper-parameter whose best value lies at the edge of its grid is flagged in the output
  (`benchmarks._common.grid_choice`), since the grid may not contain the optimum.
- A seed used to choose hyper-parameters is not one of the reported seeds
  (`benchmarks._common.tuning_and_report_seeds`).
- Sections whose runs predate these rules say so where their commands are given.

Sections: {links}

"""


def _demote(text: str) -> str:
    """Every Markdown heading one level down (lines inside fenced code blocks are left alone)."""
    out, fenced = [], False
    for ln in text.splitlines():
        if ln.startswith("```"):
            fenced = not fenced
        out.append("#" + ln if ln.startswith("#") and not fenced else ln)
    return "\n".join(out)


def render(root: Path = DOCS) -> str:
    """The text of docs/benchmarks.md built from ``root/benchmarks/*.md``."""
    names = [n for n in ORDER if (root / "benchmarks" / f"{n}.md").exists()]
    names += sorted(p.stem for p in (root / "benchmarks").glob("*.md") if p.stem not in ORDER)
    parts = []
    for n in names:
        text = (root / "benchmarks" / f"{n}.md").read_text(encoding="utf-8").strip()
        parts.append(f'<a id="{n}"></a>\n\n' + _demote(text.replace("](../img/", "](img/")))
    links = ", ".join(f"[{n}](#{n})" for n in names)
    return HEADER.format(links=links) + "\n\n".join(parts) + "\n"


def main() -> None:
    text = render()
    (DOCS / "benchmarks.md").write_text(text, encoding="utf-8")
    print(f"wrote {DOCS / 'benchmarks.md'} with {text.count('<a id=')} sections")

if __name__ == "__main__":
    main()
