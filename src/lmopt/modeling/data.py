"""Public optimisation-modelling benchmarks, read from a local copy or from the Hugging Face hub.

Formats read (``fmt="auto"`` picks by what is there):

- ``"records"``: a ``.jsonl`` / ``.json`` / ``.csv`` file, or a Hugging Face dataset id, of records with a
  question and an answer field: ``en_question`` / ``en_answer`` (the NL4OPT, MAMO and IndustryOR releases
  used by ORLM, arXiv 2405.17743), ``question`` / ``answer``, ``description`` / ``answer`` or
  ``Question`` / ``Answer``;
- ``"folders"``: ORThought's layout (ZJU-TSELab/ORThought, also used for LogiOR): one folder per problem with
  ``question.txt`` and ``answer.json`` (``{"status": ..., "obj": ...}``).

An answer that is not a number ("No Best Solution", "infeasible", an empty cell) is kept as ``answer=None``
with its text in ``answer_text``: such problems count as solved when the model reports no optimum.

Tolerances: ORThought's evaluation counts an objective within 0.01 (absolute) of the answer as correct, so
``folders`` defaults to ``abs_tol=0.01``; records default to a relative 1e-4 (pass the benchmark paper's own
if it differs). The public sets carry label noise: ORThought reports error rates of up to 42% in some
(IndustryOR among them) and ships cleaned copies, so prefer those where they exist.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_FIELDS = (("en_question", "en_answer"), ("question", "answer"), ("description", "answer"),
           ("Question", "Answer"), ("problem", "answer"))


@dataclass(frozen=True)
class BenchmarkProblem:
    id: str
    text: str
    answer: float | None
    answer_text: str
    source: str
    abs_tol: float = 0.0
    rel_tol: float = 1e-4

    def correct(self, objective: float | None) -> bool:
        """Objective within the tolerances (either suffices); a problem without an optimum is solved when the
        model reports none (``objective`` None)."""
        if self.answer is None:
            return objective is None
        return objective_matches(objective, self.answer, self.abs_tol, self.rel_tol)


def objective_matches(objective: float | None, answer: float, abs_tol: float = 0.0, rel_tol: float = 1e-4) -> bool:
    """Whether ``objective`` is within ``abs_tol`` or within ``rel_tol`` (relative to max(1, |answer|))."""
    if objective is None or not math.isfinite(objective):
        return False
    err = abs(objective - answer)
    return err <= abs_tol or err <= rel_tol * max(1.0, abs(answer))


def parse_answer(value: Any) -> float | None:
    """A benchmark answer as a number, or None when it states that there is no optimum."""
    if isinstance(value, bool):
        raise ValueError(f"an answer must be a number or a text, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    text = str(value or "").strip().replace(",", "")
    try:
        return float(text)
    except ValueError:
        return None


def load_benchmark(source: str | Path, *, fmt: str = "auto", split: str = "test", limit: int | None = None,
                   abs_tol: float | None = None, rel_tol: float | None = None) -> list[BenchmarkProblem]:
    """Problems of a benchmark: ``source`` is a file, a folder of problem folders, or a Hugging Face id."""
    if fmt not in ("auto", "records", "folders"):
        raise ValueError(f"fmt must be 'auto', 'records' or 'folders', got {fmt!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    path = Path(source).expanduser()
    if path.is_dir() and fmt in ("auto", "folders"):
        items = _folders(path)
        tol = (0.01 if abs_tol is None else abs_tol, 0.0 if rel_tol is None else rel_tol)
    else:
        if path.is_dir():
            raise ValueError(f"{path} is a folder; fmt='records' needs a .jsonl, .json or .csv file")
        items = _records(path, str(source), split)
        tol = (0.0 if abs_tol is None else abs_tol, 1e-4 if rel_tol is None else rel_tol)
    if not items:
        raise ValueError(f"no problems found in {source}")
    items = items[:limit] if limit else items
    return [BenchmarkProblem(i, q, parse_answer(a), str(a), str(source), *tol) for i, q, a in items]


def _folders(root: Path) -> list[tuple[str, str, Any]]:
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        q, a = d / "question.txt", d / "answer.json"
        if not q.is_file():
            continue
        if not a.is_file():
            raise ValueError(f"{d} has question.txt but no answer.json")
        ans = json.loads(a.read_text(encoding="utf-8"))
        if not isinstance(ans, dict) or "obj" not in ans:
            raise ValueError(f"{a} must be a JSON object with 'obj' (and 'status'), got {str(ans)[:80]}")
        value = ans["obj"] if str(ans.get("status", "optimal")).lower() == "optimal" else ans.get("status")
        out.append((d.name, q.read_text(encoding="utf-8").strip(), value))
    return out


def _records(path: Path, source: str, split: str) -> list[tuple[str, str, Any]]:
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        elif suffix == ".json":
            doc = json.loads(path.read_text(encoding="utf-8"))
            rows = list(doc.values()) if isinstance(doc, dict) else doc
        elif suffix == ".csv":
            with open(path, encoding="utf-8", newline="") as fh:
                rows = list(csv.DictReader(fh))
        else:
            raise ValueError(f"{path}: expected a .jsonl, .json or .csv file")
    elif "/" in source and not Path(source).suffix:
        from .._deps import require
        from .._hub import hub_access

        datasets = require("datasets", "data")
        with hub_access(source) as offline:
            try:
                rows = list(datasets.load_dataset(source, split=split))
            except Exception as exc:  # noqa: BLE001 - re-raised with what to do
                hint = f" ({offline}; pass a local copy instead)" if offline else ""
                raise OSError(f"cannot load the benchmark {source!r} split {split!r}: {exc}{hint}") from exc
    else:
        raise FileNotFoundError(f"{source}: no such file or folder (or a Hugging Face id 'org/name')")
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{source}: expected records (objects) with a question and an answer")
    keys = set(rows[0])
    for qf, af in _FIELDS:
        if qf in keys and af in keys:
            return [(str(r.get("id", i)), str(r[qf]).strip(), r[af]) for i, r in enumerate(rows)]
    raise ValueError(f"{source}: no question/answer fields among {sorted(keys)[:12]}; expected one of "
                     f"{[f'{q}/{a}' for q, a in _FIELDS]}")
