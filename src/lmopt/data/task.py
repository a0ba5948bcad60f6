"""A task = examples + metric + prompt template + answer parser, with seeded splits."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Metric = Callable[[str, "Example"], float]
Parser = Callable[[str], str]

DEFAULT_TEMPLATE = "{instruction}\n\n{exemplars}Input: {input}\nOutput:"
EXEMPLAR_TEMPLATE = "Input: {input}\nOutput: {target}\n\n"


@dataclass(frozen=True)
class Example:
    """One input and its reference answer; ``meta`` keeps source fields (e.g. a full GSM8K solution)."""

    input: str
    target: str
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Splits:
    train: list[Example]
    validation: list[Example]
    test: list[Example]


def exact_match(prediction: str, example: Example) -> float:
    """1.0 when the parsed prediction equals the target (case- and surrounding-space-insensitive)."""
    return float(prediction.strip().lower() == example.target.strip().lower())


def first_line(text: str) -> str:
    """The default parser: the first non-empty line of the model output."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


@dataclass
class Task:
    """An evaluation task.

    Args:
        name: short identifier used in reports and cache keys.
        examples: all examples; :meth:`split` carves train/validation/test from them.
        metric: ``metric(parsed_prediction, example) -> score in [0, 1]``.
        parser: turns raw model output into the prediction given to the metric.
        labels: for classification tasks, the closed set of answers; evaluators then score each label's
            log-probability instead of generating (much cheaper, no parsing failures).
        instruction: the seed instruction that prompt optimisers start from.
        template: how instruction, exemplars and input form the prompt (``{instruction}``,
            ``{exemplars}``, ``{input}`` placeholders).
        max_new_tokens: generation length for generative evaluation.
    """

    name: str
    examples: list[Example]
    metric: Metric = exact_match
    parser: Parser = first_line
    labels: tuple[str, ...] | None = None
    instruction: str = ""
    template: str = DEFAULT_TEMPLATE
    exemplar_template: str = EXEMPLAR_TEMPLATE
    max_new_tokens: int = 32
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a task needs a non-empty name")
        if not self.examples:
            raise ValueError(f"task {self.name!r} has no examples; check the data source or its filters")
        for placeholder in ("{instruction}", "{exemplars}", "{input}"):
            if placeholder not in self.template:
                raise ValueError(f"task {self.name!r}: template must contain {placeholder}, got {self.template!r}")
        if self.labels is not None:
            self.labels = tuple(self.labels)
            if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
                raise ValueError(f"task {self.name!r}: labels must be >= 2 distinct strings, got {self.labels}")
            stray = {e.target for e in self.examples} - set(self.labels)
            if stray:
                raise ValueError(f"task {self.name!r}: targets {sorted(stray)[:5]} are not among labels {self.labels}")

    @property
    def is_classification(self) -> bool:
        return self.labels is not None

    def format_exemplars(self, exemplars: Sequence[Example]) -> str:
        return "".join(self.exemplar_template.format(input=e.input, target=e.target) for e in exemplars)

    def format_prompt(self, instruction: str, exemplars: Sequence[Example], example: Example | str) -> str:
        """The full prompt for one input under ``instruction`` and ordered ``exemplars``."""
        text = example.input if isinstance(example, Example) else example
        return self.template.format(instruction=instruction, exemplars=self.format_exemplars(exemplars),
                                    input=text).lstrip()

    def score(self, raw_output: str, example: Example) -> float:
        return float(self.metric(self.parser(raw_output), example))

    def split(self, seed: int = 0, n_train: int | None = None, n_val: int | None = None,
              n_test: int | None = None, stratify: bool | None = None) -> Splits:
        """Deterministic train/validation/test split from ``seed``.

        Sizes default to 60/20/20 % of the examples. Classification tasks are stratified by label (the
        per-class proportions of each split follow the whole set) unless ``stratify=False``.
        """
        n = len(self.examples)
        sizes = [n_train, n_val, n_test]
        if all(s is None for s in sizes):
            sizes = [int(0.6 * n), int(0.2 * n), n - int(0.6 * n) - int(0.2 * n)]
        else:
            sizes = [0 if s is None else s for s in sizes]
        for label, s in zip(("n_train", "n_val", "n_test"), sizes):
            if not isinstance(s, int) or s < 0:
                raise ValueError(f"{label} must be a non-negative int, got {s!r}")
        if sum(sizes) > n:
            raise ValueError(f"task {self.name!r} has {n} examples; cannot split into {sizes} "
                             f"(train+validation+test = {sum(sizes)}); ask for fewer")
        rng = random.Random(f"{self.name}:{seed}")
        order = list(range(n))
        rng.shuffle(order)
        if stratify is None:
            stratify = self.is_classification
        if stratify:
            order = _stratified_order(order, [self.examples[i].target for i in range(n)])
        idx = [order[: sizes[0]], order[sizes[0]: sizes[0] + sizes[1]],
               order[sizes[0] + sizes[1]: sum(sizes)]]
        return Splits(*([self.examples[i] for i in part] for part in idx))


def _stratified_order(order: list[int], targets: list[str]) -> list[int]:
    """Interleave classes so that every prefix has (nearly) the whole set's class proportions."""
    by_class: dict[str, list[int]] = {}
    for i in order:
        by_class.setdefault(targets[i], []).append(i)
    n = len(order)
    # Each item gets a fractional position (k + 0.5) / count within its class; sorting merges classes evenly.
    keyed = []
    for cls, items in sorted(by_class.items()):
        for k, i in enumerate(items):
            keyed.append(((k + 0.5) / len(items), cls, i))
    keyed.sort()
    assert len(keyed) == n
    return [i for _, _, i in keyed]
