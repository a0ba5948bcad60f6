"""LLAMBO's four prompts (arXiv 2402.03921, Sec. 3–4): warm start, candidate sampling, and the two surrogates.

The structure follows the released code (tennisonliu/LLAMBO): a task description, the observed history as
few-shot lines ``Performance: …`` / ``Hyperparameter configuration: …`` (sampler) or the reverse (surrogates),
values as ``## … ##``, the history shuffled with a fixed permutation per template (template ``i`` uses
``numpy.random.RandomState(i)``, as released) and the candidate last. The wording is lmopt's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .space import Space, describe_space, format_config

SYSTEM = "You are an AI assistant that helps people find information."


@dataclass(frozen=True)
class TaskContext:
    """What is being tuned, in the terms the prompts use.

    Args:
        model: what the hyperparameters configure, e.g. ``"RandomForest"``.
        metric: the objective's name, e.g. ``"accuracy"`` or ``"mean squared error"``.
        task: ``"classification"``, ``"regression"`` or None (then only ``details`` describes the data).
        n_samples, n_features, n_categorical, n_classes: the data set's shape (the paper's "full context").
        details: free text appended to the description (any problem that is not a tabular model).
    """

    model: str
    metric: str
    task: str | None = None
    n_samples: int | None = None
    n_features: int | None = None
    n_categorical: int = 0
    n_classes: int | None = None
    details: str = ""

    def __post_init__(self) -> None:
        for name in ("model", "metric"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip():
                raise ValueError(f"TaskContext.{name} must be a non-empty string, got {v!r}")
        if self.task not in (None, "classification", "regression"):
            raise ValueError(f"TaskContext.task must be 'classification', 'regression' or None, got {self.task!r}")

    @classmethod
    def from_data(cls, model: str, metric: str, X: Any, y: Any, *, task: str | None = None,
                  n_categorical: int = 0, details: str = "") -> TaskContext:
        """Describe a tabular data set: samples, features and (for classification) classes from ``X``, ``y``."""
        X, y = np.asarray(X), np.asarray(y)
        if X.ndim != 2 or len(X) != len(y):
            raise ValueError(f"X must be 2-D with one row per label, got shapes {X.shape} and {y.shape}")
        if task is None:
            task = "classification" if y.dtype.kind in "biuOUS" and len(np.unique(y)) <= 50 else "regression"
        n_classes = int(len(np.unique(y))) if task == "classification" else None
        return cls(model, metric, task, int(X.shape[0]), int(X.shape[1]), n_categorical, n_classes, details)

    def data_sentences(self) -> str:
        out = []
        if self.task == "classification":
            out.append(f"The model is evaluated on a tabular classification task with {self.n_classes} classes.")
        elif self.task == "regression":
            out.append("The model is evaluated on a tabular regression task.")
        if self.n_samples is not None and self.n_features is not None:
            num = self.n_features - self.n_categorical
            out.append(f"The data set has {self.n_samples} samples and {self.n_features} features "
                       f"({self.n_categorical} categorical, {num} numerical).")
        if self.details:
            out.append(self.details.strip())
        return " ".join(out)


def _order(n: int, template: int) -> np.ndarray:
    """History order of template ``template``: the released code's fixed permutation per template index."""
    return np.random.RandomState(template).permutation(n)


def acquisition_prompt(ctx: TaskContext, space: Space, history: Sequence[tuple[Mapping[str, Any], float]],
                       target: float, template: int) -> list[dict[str, str]]:
    """Ask for a configuration expected to reach ``target`` (the candidate sampler, paper Sec. 4.2)."""
    lines = [f"Below are configurations of a {ctx.model} with the {ctx.metric} each one reached. "
             f"{ctx.data_sentences()}".rstrip(),
             "Each hyperparameter must stay within its allowed range:", describe_space(space),
             f"Suggest one configuration that should reach a {ctx.metric} of {target:.6f}. Avoid the ends of "
             f"the ranges and round numbers; write every value as precisely as its range allows. Answer with "
             f"the configuration only, as ## name: value, ... ##."]
    parts = ["\n".join(lines)]
    for k in _order(len(history), template):
        params, value = history[k]
        parts.append(f"\nPerformance: {value:.6f}\nHyperparameter configuration: ## {format_config(params, space)} ##")
    parts.append(f"\nPerformance: {target:.6f}\nHyperparameter configuration:")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "".join(parts)}]


def regression_prompt(ctx: TaskContext, space: Space, history: Sequence[tuple[Mapping[str, Any], float]],
                      candidate: Mapping[str, Any], template: int) -> list[dict[str, str]]:
    """Ask for the score of ``candidate`` (the discriminative surrogate, paper Sec. 4.1)."""
    head = (f"Below are configurations of a {ctx.model} with the {ctx.metric} each one reached. "
            f"{ctx.data_sentences()} Answer with the predicted {ctx.metric} only, as ## value ##.")
    parts = [head.replace("  ", " ")]
    for k in _order(len(history), template):
        params, value = history[k]
        parts.append(f"\nHyperparameter configuration: {format_config(params, space, sep=' is ')}\n"
                     f"Performance: ## {value:.6f} ##")
    parts.append(f"\nHyperparameter configuration: {format_config(candidate, space, sep=' is ')}\nPerformance: ")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "".join(parts)}]


def classification_prompt(ctx: TaskContext, space: Space, history: Sequence[tuple[Mapping[str, Any], int]],
                          candidate: Mapping[str, Any], template: int, top_pct: float) -> str:
    """A raw completion prompt whose next words are `` ## 1`` if ``candidate`` is in the top ``top_pct``
    (the generative surrogate, paper Sec. 4.1; the released code uses a completion model and its log-probs)."""
    head = (f"Below are configurations of a {ctx.model}, each labelled 1 if it is among the best "
            f"{top_pct * 100:g}% of configurations by {ctx.metric} and 0 otherwise. {ctx.data_sentences()} "
            f"Answer with the label only, as ## label ##.")
    parts = [head.replace("  ", " ")]
    for k in _order(len(history), template):
        params, label = history[k]
        parts.append(f"\nHyperparameter configuration: {format_config(params, space)}\nClassification: ## {label} ##")
    parts.append(f"\nHyperparameter configuration: {format_config(candidate, space)}\nClassification:")
    return "".join(parts)


def warm_start_prompt(ctx: TaskContext, space: Space, n: int) -> list[dict[str, str]]:
    """Ask for ``n`` initial configurations from the problem description alone (zero-shot warm start, Sec. 4.3)."""
    text = (f"You are helping to tune the hyperparameters of a {ctx.model} for the best {ctx.metric}. "
            f"{ctx.data_sentences()}\nThe hyperparameters and their allowed ranges:\n{describe_space(space)}\n"
            f"Suggest {n} diverse configurations, suited to this data, to start a Bayesian optimisation. Use no "
            f"'None' values. Answer with a list of {n} dictionaries, one per configuration, and nothing else.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
