"""LLAMBO as an optuna sampler (Liu et al., "Large Language Models to Enhance Bayesian Optimization",
arXiv 2402.03921; official code tennisonliu/LLAMBO).

Each trial after the initial design:

1. **Target** (paper Eq. 4): ``t = best + α·range`` when maximising (``best − α·range`` when minimising), with
   ``range`` the spread of the observed values (``0.1·|best|`` when they are all equal). With ``score_bounds``
   set, a target at or beyond a bound (within 1e-4 of the upper, 1e-5 of the lower, the released thresholds
   for accuracy and error) is pulled in by stepping α through 0.01, 0.001, −0.001, −0.01 (the released list;
   once α is the last one the target stays, where the released loop never ends).
2. **Candidates**: each of ``n_templates`` prompts (the history in a fixed per-template order) asks the LM,
   ``n_candidates / n_templates`` samples each (temperature 0.8, top-p 0.95), for a configuration that reaches
   the target. With ``jitter`` each template's target is drawn uniformly between ``t`` and ``best``.
   Suggestions are parsed, repaired only where the meaning is certain, rejected when unparseable, outside the
   space, or already observed (floats rounded to 8 decimals), and counted per reason; the LM is asked again
   (new seeds) until ``min_candidates`` remain or ``candidate_rounds`` rounds are spent.
3. **Surrogate** picks one candidate. ``"discriminative"`` (Sec. 4.1): per candidate and template,
   ``max(n_surrogate_samples, 3)`` sampled answers (temperature 0.7, top-p 0.95, 8 new tokens) to "what
   score does this configuration reach?"; their mean and standard deviation (floored at 1e-5) give the
   expected improvement over ``best``; a candidate with no readable answer gets the other candidates' mean
   of means and of spreads (as released). ``"generative"``: the probability that the candidate is in the
   best ``top_pct`` of the history, from the LM's log-probabilities of the labels ``1`` and ``0``
   (``generative_estimate="score"``: exact, one scored pair per template) or from the share of sampled
   answers that say 1 (``"sample"``, for backends without log-probabilities); the highest mean wins.

Where lmopt differs from the released code (each a choice of this implementation, documented here):

- The initial design: ``warm_start=True`` asks the LM for ``n_initial`` configurations from the description
  alone (the paper's zero-shot warm start, Sec. 4.3); invalid ones are replaced by random points. The
  released Bayesmark script reads fixed random initial points instead: ``warm_start=False`` gives seeded
  random ones.
- ``jitter=True`` by default, as the paper describes; the released ``LLAMBO`` class leaves it off.
- The released sampler falls back to *unfiltered* suggestions (possibly out of range) after 4 rounds and
  raises when there are fewer than 6; lmopt never evaluates an invalid point: with no valid candidate the
  trial is sampled at random and counted as ``random_fallback``.
- The surrogate's answer is the first number after ``##`` (or, without one, at the start of the answer):
  the released pattern needs the closing ``##``, which a tokenizer with one token per digit cannot reach
  within 8 new tokens.
- ``prompt_format="completion"`` (not in the paper) sends each conversation as one raw prompt and stops at
  the end of the line: small models that do not follow chat instructions still continue the few-shot
  pattern (the embedded SmolLM2-135M writes valid configurations this way and almost never in chat).
- The generative surrogate scores `` ## 1`` against `` ## 0`` directly; the released code samples 5
  completions and reads the top-5 log-probabilities at the first 0/1 token (the same quantity when the
  model writes ``## `` first, without the sampling noise).
- Floats in prompts have at least 2 decimals (see :mod:`lmopt.bo.space`); no input warping (the released
  default).

Every LM call goes through :class:`lmopt.lm.LM` (role ``"optimizer"`` by default): budgets, the cache and
record/replay apply. Per-trial statistics (phase, target, LM calls, proposals, rejections by reason,
repairs, the surrogate's prediction for the chosen point, seconds) are stored in each trial's system
attribute ``"llambo"`` and summed in :attr:`LLAMBOSampler.counts`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from .._deps import require
from ..lm import LM, GenerationConfig
from .prompts import TaskContext, acquisition_prompt, classification_prompt, regression_prompt, warm_start_prompt
from .space import Space, check_space, config_key, parse_config

optuna = require("optuna", "tune")
from optuna.samplers import BaseSampler, RandomSampler  # noqa: E402
from optuna.study import StudyDirection  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

SURROGATES = ("discriminative", "generative")
PROMPT_FORMATS = ("chat", "completion")
ALPHA_STEPS = (0.1, 1e-2, 1e-3, -1e-3, -1e-2)
_NUMBER_AFTER_FENCE = re.compile(r"##\s*(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)")
_LEADING_NUMBER = re.compile(r"\s*(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)")
_LABEL = re.compile(r"##\s*([01])\b")
_DICT = re.compile(r"\{[^{}]*\}")


def target_value(values: list[float], alpha: float, *, maximize: bool,
                 bounds: tuple[float | None, float | None] = (None, None)) -> tuple[float, float]:
    """The score the candidate sampler asks for, and the α that produced it (see the module docstring, step 1)."""
    if not values:
        raise ValueError("target_value needs at least one observed value")
    best = max(values) if maximize else min(values)
    spread = abs(max(values) - min(values)) or 0.1 * abs(best)
    if alpha == 0:
        alpha = -1e-3  # the released rule: never ask for exactly the best value
    lo, hi = bounds
    sign = 1.0 if maximize else -1.0

    def beyond(t: float) -> bool:
        return (maximize and hi is not None and t >= hi - 1e-4) or (
            not maximize and lo is not None and t <= lo + 1e-5)

    target = best + sign * alpha * spread
    while beyond(target):
        lower = [a for a in ALPHA_STEPS if a < alpha]
        if not lower:
            break
        alpha = lower[0]
        target = best + sign * alpha * spread
    return target, alpha


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: float, *, maximize: bool) -> np.ndarray:
    """EI of Gaussian predictions over ``best`` (the released formula, std floored at 1e-5 by the caller)."""
    from scipy.stats import norm

    delta = (mean - best) if maximize else (best - mean)
    z = delta / std
    return delta * norm.cdf(z) + std * norm.pdf(z)


def top_labels(values: list[float], top_pct: float, *, maximize: bool) -> list[int]:
    """1 for values strictly beyond the (1 − top_pct) percentile (the released labelling), else 0."""
    arr = np.asarray(values, dtype=float)
    if maximize:
        return (arr > np.percentile(arr, int(100 - top_pct * 100))).astype(int).tolist()
    return (arr < np.percentile(arr, int(top_pct * 100))).astype(int).tolist()


class LLAMBOSampler(BaseSampler):
    """LLAMBO's candidate sampler and surrogate behind optuna's sampler interface (see the module docstring).

    Args:
        lm: the language model (an :class:`lmopt.lm.LM`).
        context: what is tuned (:class:`TaskContext`).
        search_space: name → optuna distribution. Needed for the warm start (optuna's define-by-run API reveals
            the space only once a trial has run); without it the space is the intersection of the completed
            trials' spaces and the first trial is random.
        surrogate: ``"discriminative"`` (default) or ``"generative"``.
        n_initial: trials of the initial design (released: 5).
        n_candidates, n_templates: LM suggestions per round and prompt templates they are split over (10, 2).
        n_surrogate_samples: discriminative answers per candidate and template (10; at least 3 are drawn).
        alpha: target exploration (0.1); top_pct: the generative surrogate's "good" share (0.25).
        score_bounds: (lower, upper) the objective cannot pass, e.g. ``(0, 1)`` for accuracy; None: unbounded.
        min_candidates, candidate_rounds: ask again until this many valid candidates, at most this many rounds
            (5, 4 as released).
        prompt_format: ``"chat"`` (the released code's chat calls) or ``"completion"`` (see above).
        seed: seeds the random points, the jitter and every LM call.
        role: the budget role of the LM calls.
    """

    def __init__(self, lm: LM, context: TaskContext, search_space: Space | None = None, *,
                 surrogate: str = "discriminative", n_initial: int = 5, warm_start: bool = True,
                 n_candidates: int = 10, n_templates: int = 2, n_surrogate_samples: int = 10, alpha: float = 0.1,
                 top_pct: float = 0.25, jitter: bool = True,
                 score_bounds: tuple[float | None, float | None] = (None, None), min_candidates: int = 5,
                 candidate_rounds: int = 4, candidate_temperature: float = 0.8, surrogate_temperature: float = 0.7,
                 top_p: float = 0.95, candidate_max_tokens: int = 500, surrogate_max_tokens: int = 8,
                 warm_start_max_tokens: int = 1000, generative_estimate: str = "score",
                 prompt_format: str = "chat", seed: int = 0, role: str = "optimizer") -> None:
        if not isinstance(lm, LM):
            raise TypeError(f"lm must be an lmopt.lm.LM, got {type(lm).__name__}")
        if not isinstance(context, TaskContext):
            raise TypeError(f"context must be a lmopt.bo.TaskContext, got {type(context).__name__}")
        if surrogate not in SURROGATES:
            raise ValueError(f"unknown surrogate {surrogate!r}; choose one of {SURROGATES}")
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
        if generative_estimate not in ("score", "sample"):
            raise ValueError(f"generative_estimate must be 'score' or 'sample', got {generative_estimate!r}")
        for name, v, lo in (("n_initial", n_initial, 1), ("n_candidates", n_candidates, 1),
                            ("n_templates", n_templates, 1), ("n_surrogate_samples", n_surrogate_samples, 1),
                            ("min_candidates", min_candidates, 1), ("candidate_rounds", candidate_rounds, 1),
                            ("candidate_max_tokens", candidate_max_tokens, 1),
                            ("surrogate_max_tokens", surrogate_max_tokens, 1),
                            ("warm_start_max_tokens", warm_start_max_tokens, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        if n_candidates < n_templates:
            raise ValueError(f"n_candidates ({n_candidates}) must be at least n_templates ({n_templates}): each "
                             f"template asks for n_candidates // n_templates suggestions")
        if not (-1 <= alpha <= 1):
            raise ValueError(f"alpha must be in [-1, 1], got {alpha!r}")
        if not (0 < top_pct < 1):
            raise ValueError(f"top_pct must be in (0, 1), got {top_pct!r}")
        if len(score_bounds) != 2:
            raise ValueError(f"score_bounds must be (lower, upper) with None for no bound, got {score_bounds!r}")
        self.lm, self.context, self.surrogate = lm, context, surrogate
        self.search_space = None if search_space is None else check_space(search_space)
        self.n_initial, self.warm_start = n_initial, bool(warm_start)
        self.n_candidates, self.n_templates, self.n_surrogate_samples = n_candidates, n_templates, n_surrogate_samples
        self.alpha, self.top_pct, self.jitter = float(alpha), float(top_pct), bool(jitter)
        self.score_bounds = tuple(score_bounds)
        self.min_candidates, self.candidate_rounds = min_candidates, candidate_rounds
        self.candidate_temperature, self.surrogate_temperature = candidate_temperature, surrogate_temperature
        self.top_p, self.generative_estimate, self.role = top_p, generative_estimate, role
        self.prompt_format = prompt_format
        self.candidate_max_tokens, self.surrogate_max_tokens = candidate_max_tokens, surrogate_max_tokens
        self.warm_start_max_tokens = warm_start_max_tokens
        self.seed = int(seed)
        self._random = RandomSampler(seed=self.seed)
        self._rng = np.random.default_rng(self.seed)
        self._intersection = optuna.search_space.IntersectionSearchSpace()
        self._warm: dict[int, list[dict[str, Any]]] = {}  # study id -> warm-start configurations not yet used
        self.counts: Counter[str] = Counter()

    # -- optuna's interface ---------------------------------------------------------------------------
    def reseed_rng(self) -> None:
        self._random.reseed_rng()
        self._rng = np.random.default_rng()

    def infer_relative_search_space(self, study: Any, trial: FrozenTrial) -> dict[str, Any]:
        if self.search_space is not None:
            return dict(self.search_space)
        space = self._intersection.calculate(study)
        return {n: d for n, d in space.items() if not d.single()}

    def sample_independent(self, study: Any, trial: FrozenTrial, param_name: str, param_distribution: Any) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def sample_relative(self, study: Any, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        if not search_space:
            return {}
        self._raise_error_if_multi_objective(study)
        space = check_space(search_space)
        maximize = study.direction == StudyDirection.MAXIMIZE
        history, seen = self._history(study, space)
        t0 = time.perf_counter()
        calls0 = self.lm.meter.usage(self.role).calls
        if len(history) < self.n_initial:
            params, stats = self._initial(study, space, seen)
        else:
            params, stats = self._step(trial, space, history, seen, maximize)
        stats["lm_calls"] = self.lm.meter.usage(self.role).calls - calls0
        stats["seconds"] = round(time.perf_counter() - t0, 4)
        self.counts[stats["phase"]] += 1
        for reason, n in stats.get("rejected", {}).items():
            self.counts[f"rejected: {reason}"] += n
        self.counts["repaired"] += stats.get("repaired", 0)
        study._storage.set_trial_system_attr(trial._trial_id, "llambo", stats)
        return params

    # -- the pieces ----------------------------------------------------------------------------------
    def _history(self, study: Any, space: Space) -> tuple[list[tuple[dict[str, Any], float]], set[tuple]]:
        """Completed trials with finite values over the whole space, and every point already taken (running
        trials included, so parallel workers do not duplicate each other)."""
        history, seen = [], set()
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING,
                                                            TrialState.WAITING)):
            if not all(n in t.params for n in space):
                continue
            params = {n: t.params[n] for n in space}
            seen.add(config_key(params, space))
            if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value):
                history.append((params, float(t.value)))
        return history, seen

    def _config(self, call: str, trial_number: int, rnd: int = 0, **kw: Any) -> GenerationConfig:
        which = ("warm", "candidates", "surrogate").index(call)
        seed = int(np.random.SeedSequence([self.seed, trial_number + 1, rnd, which]).generate_state(1)[0])
        return GenerationConfig(seed=seed, **kw)

    def _ask(self, convs: list[list[dict[str, str]]], cfg: GenerationConfig, *, one_line: bool = True
             ) -> list[list[Any]]:
        """Chat, or (``prompt_format="completion"``) continue the conversation's text as a raw prompt, stopping
        at the end of the line the prompt opened (a configuration or a score is one line)."""
        if self.prompt_format == "chat":
            return self.lm.chat(convs, cfg, role=self.role)
        if one_line:
            cfg = dataclasses.replace(cfg, stop=("\n",))
        return self.lm.generate([as_completion(c) for c in convs], cfg, role=self.role)

    def _ask_grouped(self, groups: list[list[list[dict[str, str]]]], cfg: GenerationConfig) -> list[list[Any]]:
        """:meth:`_ask` per group of equal length, the answers interleaved back (group 0's first, group 1's
        first, ...): the groups are strided slices ``convs[i::len(groups)]`` of one list."""
        answers = [self._ask(g, cfg) for g in groups]
        return [answers[g][k] for k in range(len(answers[0])) for g in range(len(answers))]

    def _initial(self, study: Any, space: Space, seen: set[tuple]) -> tuple[dict[str, Any], dict[str, Any]]:
        if not (self.warm_start and self.search_space is not None):
            return {}, {"phase": "random"}
        sid = study._study_id
        stats: dict[str, Any] = {"phase": "warm_start"}
        if sid not in self._warm:
            configs, rejected = self._ask_warm_start(space)
            self._warm[sid] = configs
            stats.update(proposals=len(configs) + sum(rejected.values()), accepted=len(configs),
                         rejected=dict(rejected))
        queue = self._warm[sid]
        while queue:
            params = queue.pop(0)
            if config_key(params, space) not in seen:
                return params, stats
        stats["phase"] = "random"
        return {}, stats

    def _ask_warm_start(self, space: Space) -> tuple[list[dict[str, Any]], Counter[str]]:
        conv = warm_start_prompt(self.context, space, self.n_initial)
        cfg = self._config("warm", -1, temperature=self.candidate_temperature, top_p=self.top_p,
                           max_new_tokens=self.warm_start_max_tokens)
        text = self._ask([conv], cfg, one_line=False)[0][0].text
        configs, keys, rejected = [], set(), Counter()
        for block in _DICT.findall(text) or [text]:
            parsed = parse_config(block.strip("{}"), space)
            if parsed.params is None:
                rejected[_reason(parsed.reason)] += 1
            elif config_key(parsed.params, space) in keys:
                rejected["duplicate"] += 1
            else:
                keys.add(config_key(parsed.params, space))
                configs.append(parsed.params)
        return configs[: self.n_initial], rejected

    def _step(self, trial: FrozenTrial, space: Space, history: list[tuple[dict[str, Any], float]],
              seen: set[tuple], maximize: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        values = [v for _, v in history]
        best = max(values) if maximize else min(values)
        target, alpha = target_value(values, self.alpha, maximize=maximize, bounds=self.score_bounds)
        targets = [float(self._rng.uniform(min(target, best), max(target, best))) if self.jitter else target
                   for _ in range(self.n_templates)]
        convs = [acquisition_prompt(self.context, space, history, t, i) for i, t in enumerate(targets)]
        per_template = self.n_candidates // self.n_templates
        candidates: list[dict[str, Any]] = []
        keys = set(seen)
        rejected: Counter[str] = Counter()
        repaired = proposals = rounds = 0
        while len(candidates) < self.min_candidates and rounds < self.candidate_rounds:
            cfg = self._config("candidates", trial.number, rounds, n=per_template,
                               temperature=self.candidate_temperature, top_p=self.top_p,
                               max_new_tokens=self.candidate_max_tokens)
            rounds += 1
            for completions in self._ask(convs, cfg):  # one batch: decoding steps, not rows, cost time
                for c in completions:
                    proposals += 1
                    parsed = parse_config(c.text, space)
                    if parsed.params is None:
                        rejected[_reason(parsed.reason)] += 1
                        continue
                    key = config_key(parsed.params, space)
                    if key in keys:
                        rejected["already observed" if key in seen else "duplicate"] += 1
                        continue
                    keys.add(key)
                    repaired += bool(parsed.repaired)
                    candidates.append(parsed.params)
        stats: dict[str, Any] = {"phase": "llambo", "target": target, "alpha": alpha, "targets": targets,
                                 "rounds": rounds, "proposals": proposals, "accepted": len(candidates),
                                 "rejected": dict(rejected), "repaired": repaired}
        if not candidates:
            stats["phase"] = "random_fallback"
            return {}, stats
        if self.surrogate == "discriminative":
            scores, info = self._discriminative(trial, space, history, candidates, best, maximize)
        else:
            scores, info = self._generative(trial, space, history, candidates, maximize)
        finite = np.where(np.isfinite(scores), scores, -np.inf)
        pick = int(np.argmax(finite)) if np.isfinite(finite).any() else 0  # no prediction: the first, as released
        mean, std = info.pop("mean", None), info.pop("std", None)
        stats.update(info, chosen=pick, chosen_score=float(scores[pick]) if np.isfinite(scores[pick]) else None)
        if mean is not None:
            stats["chosen_mean"], stats["chosen_std"] = float(mean[pick]), float(std[pick])
        return candidates[pick], stats

    def _discriminative(self, trial: FrozenTrial, space: Space, history: list[tuple[dict[str, Any], float]],
                        candidates: list[dict[str, Any]], best: float, maximize: bool
                        ) -> tuple[np.ndarray, dict[str, Any]]:
        convs = [regression_prompt(self.context, space, history, c, i)
                 for c in candidates for i in range(self.n_templates)]
        cfg = self._config("surrogate", trial.number, n=max(self.n_surrogate_samples, 3),
                           temperature=self.surrogate_temperature, top_p=self.top_p,
                           max_new_tokens=self.surrogate_max_tokens)
        # one call per template: its prompts differ only in the last line, so a local model reuses the rest
        answers = self._ask_grouped([convs[i::self.n_templates] for i in range(self.n_templates)], cfg)
        preds = np.full((len(candidates), self.n_templates * cfg.n), np.nan)
        for j, completions in enumerate(answers):
            c, i = divmod(j, self.n_templates)
            for k, comp in enumerate(completions):
                preds[c, i * cfg.n + k] = _read_number(comp.text)
        parsed = int(np.isfinite(preds).sum())
        with _quiet_nan():  # rows of all-NaN answers give NaN, handled below
            mean, std = np.nanmean(preds, axis=1), np.nanstd(preds, axis=1)
            if np.isfinite(mean).any():  # the released imputation for candidates with no readable answer
                mean[~np.isfinite(mean)] = np.nanmean(mean)
                std[~np.isfinite(std)] = np.nanmean(std)
        std = np.maximum(std, 1e-5)
        ei = expected_improvement(mean, std, best, maximize=maximize) if np.isfinite(mean).any() \
            else np.full(len(candidates), np.nan)
        info = {"surrogate_answers": int(preds.size), "surrogate_parsed": parsed,
                "mean": [float(x) for x in mean], "std": [float(x) for x in std]}
        return ei, info

    def _generative(self, trial: FrozenTrial, space: Space, history: list[tuple[dict[str, Any], float]],
                    candidates: list[dict[str, Any]], maximize: bool) -> tuple[np.ndarray, dict[str, Any]]:
        labels = top_labels([v for _, v in history], self.top_pct, maximize=maximize)
        labelled = [(p, lab) for (p, _), lab in zip(history, labels)]
        probs = np.full((len(candidates), self.n_templates), np.nan)
        answers = 0
        n = max(self.n_candidates // self.n_templates, 3)
        cfg = self._config("surrogate", trial.number, n=n, temperature=self.surrogate_temperature,
                           top_p=self.top_p, max_new_tokens=self.surrogate_max_tokens)
        for i in range(self.n_templates):  # one call per template (shared prompt prefix, see _discriminative)
            prompts = [classification_prompt(self.context, space, labelled, c, i, self.top_pct) for c in candidates]
            if self.generative_estimate == "score":
                scores = self.lm.score([p for p in prompts for _ in (0, 1)], [" ## 1", " ## 0"] * len(prompts),
                                       role=self.role)
                for c in range(len(candidates)):
                    l1, l0 = scores[2 * c].logprob, scores[2 * c + 1].logprob
                    probs[c, i] = 1.0 / (1.0 + math.exp(l0 - l1))
                answers += 2 * len(prompts)
                continue
            for c, completions in enumerate(self.lm.generate(prompts, cfg, role=self.role)):
                read = [m.group(1) for m in (_LABEL.search(x.text) for x in completions) if m]
                answers += len(completions)
                if read:
                    probs[c, i] = read.count("1") / len(read)
        with _quiet_nan():
            p = np.nanmean(probs, axis=1)
        return p, {"surrogate_answers": answers, "surrogate_parsed": int(np.isfinite(probs).sum()),
                   "good_in_history": int(sum(labels))}


@contextlib.contextmanager
def _quiet_nan() -> Iterator[None]:
    """Silence numpy's warnings for means of all-NaN rows (the caller treats their NaN)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def as_completion(conv: list[dict[str, str]]) -> str:
    """A conversation as one raw prompt: the messages' texts, blank-line separated."""
    return "\n\n".join(m["content"] for m in conv)


def _read_number(text: str) -> float:
    m = _NUMBER_AFTER_FENCE.search(text) or _LEADING_NUMBER.match(text)
    if m is None:
        return math.nan
    v = float(m.group(1))
    return v if math.isfinite(v) else math.nan


def _reason(reason: str) -> str:
    """A reason's category for the counts (the full text names the value, which varies)."""
    for prefix in ("out of space", "unknown parameter", "missing", "unparseable"):
        if reason.startswith(prefix):
            return prefix
    return reason.split(":")[0]


def history_of(study: Any) -> list[Mapping[str, Any]]:
    """Every trial's LLAMBO statistics, in trial order (empty dicts for trials another sampler made)."""
    return [t.system_attrs.get("llambo", {}) for t in study.get_trials(deepcopy=False)]
