"""The prompt-optimiser framework: budgets, the run context, results, checkpoints and resume.

An optimiser subclasses :class:`Optimizer` and implements ``_optimize(ctx)``, talking to the world only
through the :class:`RunContext`: ``ctx.evaluate(prompt)`` (validation score, one unit of the evaluation
budget per *new* prompt), ``ctx.propose(...)`` (an optimiser-LLM proposal parsed tolerantly, with retries
and a logged failure) and ``ctx.complete(...)`` / ``ctx.outputs(...)`` (raw LM calls).

Resume: every LM-dependent result (evaluations, completions) is written to ``checkpoint.json`` in a
content-addressed journal as soon as it is obtained. A resumed run re-executes the optimiser from the
start with the same seed; journal entries answer the calls already made (no LM call), so the resumed run
follows exactly the trajectory of an uninterrupted one and continues where it stopped. A finished run
returns its stored result without any LM call. Budgets: the evaluation budget is checked before each new
evaluation; LM limits (calls/tokens per role) are enforced by :class:`lmopt.lm.LM` *before* a call, and a
``BudgetExceeded`` ends the run gracefully with the best prompt so far (``stop_reason``).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import read_json, write_json_atomic
from ..data.task import Example, Splits, Task
from ..lm.client import LM
from ..lm.types import GenerationConfig
from ..lm.usage import Budget, BudgetExceeded, UsageMeter
from .evaluator import EvalResult, Prompt, evaluate_prompt
from .parsing import parse_proposal

CHECKPOINT_VERSION = 2  # 2: the identity covers every model, the task format and the split contents
DEFAULT_SPLIT = {"seed": 0, "n_train": 50, "n_val": 20, "n_test": 100}
ProgressFn = Callable[[int, int, str], None]


class PrintProgress:
    """``progress=True``: one line per evaluation on stderr, with the seconds since the run started."""

    def __init__(self, stream: Any = None) -> None:
        self.stream, self._t0 = stream, time.perf_counter()

    def __call__(self, done: int, total: int, message: str) -> None:
        print(f"[{time.perf_counter() - self._t0:7.1f} s] {done}/{total} {message}",
              file=self.stream or sys.stderr, flush=True)


def resolve_progress(progress: ProgressFn | bool | None) -> ProgressFn | None:
    """``True`` → :class:`PrintProgress`, ``False``/``None`` → None, a callable as it is."""
    if isinstance(progress, bool):
        return PrintProgress() if progress else None
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be True, False, None or a callable (done, total, message), got {progress!r}")
    return progress


class StopRun(Exception):
    """Raised inside an optimiser to end the run (budget spent); caught by :meth:`Optimizer.run`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class PromptBudget:
    """How much a run may spend.

    Args:
        evaluations: prompt evaluations on the validation split (the papers' budget unit, e.g. 165).
            The seed prompt's evaluation is the first of them.
        lm: optional LM limits per role (``task`` / ``optimizer`` / ``judge`` / ``total``) for this run,
            enforced before each call on top of any budget the LMs already carry.
    """

    evaluations: int = 165
    lm: Budget | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.evaluations, int) or isinstance(self.evaluations, bool) or self.evaluations < 1:
            raise ValueError(f"budget evaluations must be a positive int, got {self.evaluations!r}")

    @classmethod
    def from_any(cls, budget: PromptBudget | int | dict[str, Any] | None) -> PromptBudget:
        """``165`` → 165 evaluations; ``{"evaluations": 50, "task": {"calls": 2000}}`` → with LM limits."""
        if budget is None:
            return cls()
        if isinstance(budget, PromptBudget):
            return budget
        if isinstance(budget, int) and not isinstance(budget, bool):
            return cls(evaluations=budget)
        if isinstance(budget, dict):
            d = dict(budget)
            ev = d.pop("evaluations", 165)
            return cls(evaluations=ev, lm=Budget.from_dict(d) if d else None)
        raise TypeError(f"budget must be an int (evaluations), a dict or a PromptBudget, got {type(budget).__name__}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"evaluations": self.evaluations}
        if self.lm is not None:
            out["lm"] = {"total": vars(self.lm.total), **{r: vars(v) for r, v in self.lm.per_role.items()}}
        return out


class _ForwardingMeter(UsageMeter):
    """Charges and checks the run's meter *and* the LM's own meter (so both budgets hold)."""

    def __init__(self, run_meter: UsageMeter, parent: UsageMeter) -> None:
        super().__init__()
        self.run_meter, self.parent = run_meter, parent

    def check(self, role: str, calls: int, prompt_tokens: int, completion_tokens: int) -> None:
        self.run_meter.check(role, calls, prompt_tokens, completion_tokens)
        self.parent.check(role, calls, prompt_tokens, completion_tokens)

    def charge(self, role: str, calls: int, prompt_tokens: int, completion_tokens: int,
               cached_calls: int = 0) -> None:
        self.run_meter.charge(role, calls, prompt_tokens, completion_tokens, cached_calls)
        self.parent.charge(role, calls, prompt_tokens, completion_tokens, cached_calls)

    def usage(self, role: str | None = None) -> Any:
        return self.run_meter.usage(role)

    def report(self) -> dict[str, dict[str, int]]:
        return self.run_meter.report()


def prompt_key(prompt: Prompt) -> str:
    blob = json.dumps(prompt.to_dict(), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def prompt_text(task: Task, prompt: Prompt) -> str:
    """The prompt as one string (instruction + ordered exemplars), e.g. for embedding (EASE)."""
    ex = task.format_exemplars(prompt.exemplars)
    return f"{prompt.instruction}\n\n{ex}".strip()


@dataclass
class PromptOptimizationResult:
    """What :meth:`Optimizer.run` returns (``to_dict()`` is JSON-able)."""

    method: str
    task: str
    best_prompt: Prompt
    val_score: float
    test_score: float | None
    seed_prompt: Prompt
    seed_val_score: float | None
    seed_test_score: float | None
    history: list[dict[str, Any]]
    usage: dict[str, dict[str, int]]
    n_evaluations: int
    stop_reason: str
    parse_failures: int
    wall_time_s: float
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["best_prompt"] = self.best_prompt.to_dict()
        d["seed_prompt"] = self.seed_prompt.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromptOptimizationResult:
        d = dict(d)
        d["best_prompt"] = Prompt.from_dict(d["best_prompt"])
        d["seed_prompt"] = Prompt.from_dict(d["seed_prompt"])
        return cls(**d)


class RunContext:
    """Everything an optimiser may use during one run (see the module docstring)."""

    def __init__(self, *, method: str, task: Task, splits: Splits, lm: LM, optimizer_lm: LM, judge_lm: LM,
                 seed: int, budget: PromptBudget, journal: dict[str, Any], save: Callable[[], None],
                 progress: ProgressFn | None, eval_kwargs: dict[str, Any]) -> None:
        self.method, self.task, self.splits = method, task, splits
        self.lm, self.optimizer_lm, self.judge_lm = lm, optimizer_lm, judge_lm
        self.seed, self.budget = seed, budget
        self.journal = journal
        self._save = save
        self._progress = progress
        self.eval_kwargs = eval_kwargs
        self.history: list[dict[str, Any]] = []
        self.scores: dict[str, float] = {}
        self.prompts: dict[str, Prompt] = {}
        self.evaluations_used = 0
        self._sampled = 0  # validation examples scored by sampled evaluations beyond the last whole evaluation
        self.parse_failures = 0
        self.best: tuple[float, Prompt] | None = None
        self._t0 = time.perf_counter()

    # -- randomness -------------------------------------------------------------------------------
    def rng(self, stream: str) -> np.random.Generator:
        """A numpy Generator for a named stream, seeded by ``(seed, stream)``; never the global RNG."""
        h = int.from_bytes(hashlib.sha256(stream.encode()).digest()[:8], "little")
        return np.random.default_rng([self.seed, h])

    # -- evaluations ------------------------------------------------------------------------------
    @property
    def evaluations_left(self) -> int:
        return self.budget.evaluations - self.evaluations_used

    def score_of(self, prompt: Prompt) -> float | None:
        return self.scores.get(prompt_key(prompt))

    def evaluate(self, prompt: Prompt, source: str = "", **info: Any) -> float:
        """Validation score of ``prompt``; a prompt already evaluated costs nothing."""
        if not isinstance(prompt, Prompt):
            raise TypeError(f"evaluate takes a Prompt, got {type(prompt).__name__}")
        if not prompt.instruction.strip() and not prompt.exemplars:
            raise ValueError("refusing to evaluate an empty prompt (no instruction, no exemplars)")
        key = prompt_key(prompt)
        if key in self.scores:
            return self.scores[key]
        if self.sample_examples_left < len(self.splits.validation):  # a full evaluation no longer fits
            raise StopRun("evaluation budget spent")
        res = self._journaled_eval("val:" + key, prompt, self.splits.validation)
        self.evaluations_used += 1
        score = float(res["score"])
        self.scores[key] = score
        self.prompts[key] = prompt
        if self.best is None or score > self.best[0]:
            self.best = (score, prompt)
        self.log("eval", prompt=prompt.to_dict(), val_score=score, source=source, **info)
        self.tick(f"{self.method}: eval {self.evaluations_used}/{self.budget.evaluations} "
                  f"score {score:.3f} best {self.best[0]:.3f}")
        return score

    def evaluation(self, prompt: Prompt) -> dict[str, Any] | None:
        """The stored validation evaluation of ``prompt`` (score, per-example scores, predictions), if any."""
        return self.journal.get("evals", {}).get("val:" + prompt_key(prompt))

    @property
    def sample_examples_left(self) -> int:
        """Validation examples that sampled evaluations (:meth:`evaluate_sample`) may still score."""
        return self.evaluations_left * len(self.splits.validation) - self._sampled

    def evaluate_sample(self, prompt: Prompt, examples: Sequence[Example], source: str = "", **info: Any) -> float:
        """Mean score of ``prompt`` on ``examples``, a sample of the validation split (APE's fresh subsamples and
        UCB rounds). It costs ``len(examples) / n_val`` of an evaluation, so that sampled and full evaluations
        spend one budget; it does not make ``prompt`` a candidate for the best prompt (score it in full with
        :meth:`evaluate` for that)."""
        if not examples:
            raise ValueError("evaluate_sample needs at least one example")
        self.charge_examples(len(examples))
        fp = _fingerprint([(e.input, e.target) for e in examples])
        res = self._journaled_eval(f"sample:{fp}:{prompt_key(prompt)}", prompt, examples)
        score = float(res["score"])
        self.log("sample_eval", prompt=prompt.to_dict(), score=score, n_examples=len(examples), source=source,
                 **info)
        self.tick(f"{self.method}: {self.evaluations_used}/{self.budget.evaluations} evaluations spent, "
                  f"sample score {score:.3f}")
        return score

    def charge_examples(self, n: int) -> None:
        """Spend the cost of ``n`` task-model passes over single examples (``n / n_val`` of an evaluation): the
        unit that sampled evaluations, minibatch forwards (TextGrad) and white-box passes (GReaTer) share with
        whole evaluations. Raises :class:`StopRun` when they no longer fit."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"charge_examples takes a non-negative int, got {n!r}")
        if n > self.sample_examples_left:
            raise StopRun("evaluation budget spent")
        used, self._sampled = divmod(self._sampled + n, len(self.splits.validation))
        self.evaluations_used += used

    def run_batch(self, prompt: Prompt, examples: Sequence[Example], source: str = "") -> dict[str, Any]:
        """The task model's answers to ``examples`` (any split, e.g. a training minibatch) under ``prompt``:
        ``{"score", "per_example", "predictions", "raw"}`` (``raw``: generated texts, None in label-scoring
        mode). Charged like :meth:`evaluate_sample`; journaled for resume."""
        if not examples:
            raise ValueError("run_batch needs at least one example")
        self.charge_examples(len(examples))
        fp = _fingerprint([(e.input, e.target) for e in examples])
        res = self._journaled_eval(f"batch:{fp}:{prompt_key(prompt)}", prompt, examples)
        self.log("batch", prompt=prompt.to_dict(), score=float(res["score"]), n_examples=len(examples),
                 source=source)
        return res

    def evaluate_on(self, prompt: Prompt, examples: Sequence[Example], split_name: str) -> dict[str, Any]:
        """Score on another split (e.g. test) without spending the evaluation budget."""
        return self._journaled_eval(f"{split_name}:{prompt_key(prompt)}", prompt, examples)

    def _journaled_eval(self, jkey: str, prompt: Prompt, examples: Sequence[Example]) -> dict[str, Any]:
        evals = self.journal.setdefault("evals", {})
        if jkey in evals:
            return evals[jkey]
        try:
            res: EvalResult = evaluate_prompt(self.lm, self.task, prompt, list(examples), **self.eval_kwargs)
        except BudgetExceeded as exc:
            raise StopRun(f"LM budget: {exc}") from exc
        out = {"score": res.score, "per_example": res.per_example, "predictions": res.predictions,
               "raw": res.details.get("raw")}
        evals[jkey] = out
        self._save()
        return out

    def outputs(self, prompt: Prompt, examples: Sequence[Example], *, count: bool = True,
                max_new_tokens: int | None = None) -> list[str]:
        """Raw task-LM outputs of ``prompt`` on ``examples`` (chat, greedy); one evaluation when ``count``."""
        if count and self.evaluations_left <= 0:
            raise StopRun("evaluation budget spent")
        texts = [prompt.render(self.task, e) for e in examples]
        cfg = GenerationConfig(max_new_tokens=max_new_tokens or self.task.max_new_tokens)
        outs = self.complete([[{"role": "user", "content": t}] for t in texts], cfg, role="task")
        if count:
            self.evaluations_used += 1
            self.log("execute", prompt=prompt.to_dict(), n_examples=len(examples))
            self.tick(f"{self.method}: eval {self.evaluations_used}/{self.budget.evaluations}")
        return [o[0] for o in outs]

    # -- raw LM calls ----------------------------------------------------------------------------
    def _lm_for(self, role: str) -> LM:
        return {"task": self.lm, "optimizer": self.optimizer_lm, "judge": self.judge_lm}.get(role,
                                                                                          self.optimizer_lm)

    def complete(self, conversations: Sequence[Sequence[dict[str, str]]], config: GenerationConfig, *,
                 role: str = "optimizer") -> list[list[str]]:
        """Chat completions (``config.n`` texts per conversation), journaled for resume."""
        lm = self._lm_for(role)
        calls = self.journal.setdefault("calls", {})
        keys = []
        for conv in conversations:
            blob = json.dumps({"role": role, "model": lm.name, "messages": [dict(m) for m in conv],
                               "config": config.key_fields(), "n": config.n}, sort_keys=True)
            keys.append(hashlib.sha256(blob.encode()).hexdigest()[:32])
        todo = [i for i, k in enumerate(keys) if k not in calls]
        if todo:
            try:
                fresh = lm.chat([list(conversations[i]) for i in todo], config, role=role)
            except BudgetExceeded as exc:
                raise StopRun(f"LM budget: {exc}") from exc
            for i, comps in zip(todo, fresh):
                calls[keys[i]] = [c.text for c in comps]
            self._save()
        return [list(calls[k]) for k in keys]

    def can_choose(self, role: str = "judge") -> bool:
        """Whether the LM of ``role`` can score a closed set of answers (see :meth:`choose`)."""
        return self._lm_for(role).supports_choose

    def choose(self, conversation: Sequence[dict[str, str]], options: Sequence[str], *, prefix: str = "",
               role: str = "judge") -> int:
        """The index of the most likely of ``options`` as the reply to ``conversation`` (scored, not generated:
        :meth:`lmopt.lm.LM.choose`), journaled for resume."""
        lm = self._lm_for(role)
        calls = self.journal.setdefault("choices", {})
        key = _fingerprint({"role": role, "model": lm.name, "messages": [dict(m) for m in conversation],
                            "options": list(options), "prefix": prefix})
        if key not in calls:
            try:
                idx, _ = lm.choose(list(conversation), list(options), prefix=prefix, role=role)
            except BudgetExceeded as exc:
                raise StopRun(f"LM budget: {exc}") from exc
            calls[key] = idx
            self._save()
        return int(calls[key])

    def propose(self, conversation: Sequence[dict[str, str]], *, tag: str = "prompt", plain: bool = False,
                retries: int = 2, temperature: float = 1.0, max_new_tokens: int = 128, n: int = 1,
                seed: int = 0, role: str = "optimizer", what: str = "proposal") -> list[str]:
        """Ask the optimiser LM for ``n`` proposals and parse them tolerantly.

        Unparseable samples are retried (fresh samples with another seed; greedy decoding gets a format
        reminder appended instead) up to ``retries`` times; what still fails is logged as a
        ``parse_failure`` history entry scored 0.0 (outside the evaluation budget). Returns the parsed,
        non-empty proposals (possibly fewer than ``n``, possibly none) — never an empty string.
        """
        got: list[str] = []
        raw_fail: list[str] = []
        need = n
        conv = [dict(m) for m in conversation]
        for attempt in range(retries + 1):
            if need <= 0:
                break
            if temperature > 0:
                cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, n=need,
                                       seed=seed * 1000 + attempt)
                msgs = conv
            else:
                cfg = GenerationConfig(max_new_tokens=max_new_tokens)
                msgs = conv if attempt == 0 else conv + [{"role": "user", "content":
                       f"Reply with only the new text between <{tag}> and </{tag}>."}]
            texts = self.complete([msgs], cfg, role=role)[0]
            raw_fail = []
            for t in texts:
                p = parse_proposal(t, tag, plain=plain)
                if p.text is not None:
                    got.append(p.text)
                else:
                    raw_fail.append(t)
            need = n - len(got)
            if temperature == 0:
                need = 0 if got else need
        for t in raw_fail[: max(0, need)]:
            self.parse_failures += 1
            self.log("parse_failure", what=what, raw=t[:500], score=0.0)
        return got

    # -- bookkeeping -------------------------------------------------------------------------------
    def log(self, kind: str, **info: Any) -> None:
        self.history.append({"step": len(self.history), "kind": kind, "evaluations": self.evaluations_used,
                             "t": round(time.perf_counter() - self._t0, 3), **info})

    def tick(self, message: str) -> None:
        if self._progress is not None:
            self._progress(self.evaluations_used, self.budget.evaluations, message)


def _fingerprint(d: Any) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _task_identity(task: Task) -> dict[str, Any]:
    """Name, prompt format and label set of a task (its examples enter through the splits)."""
    return {"name": task.name, "instruction": task.instruction, "template": task.template,
            "exemplar_template": task.exemplar_template, "labels": list(task.labels or ()),
            "max_new_tokens": task.max_new_tokens}


class Optimizer:
    """Base class of the prompt optimisers.

    Subclasses set ``name`` and ``paper``, store their hyper-parameters in ``self.hparams`` (used in the
    checkpoint fingerprint and the report) and implement ``_optimize(ctx)``.
    """

    name = "base"
    paper = ""

    def __init__(self, **hparams: Any) -> None:
        self.hparams = hparams

    def _optimize(self, ctx: RunContext) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self, task: Task, lm: LM, budget: PromptBudget | int | dict[str, Any] | None = None, *,
            optimizer_lm: LM | None = None, judge_lm: LM | None = None, seed: int = 0,
            splits: Splits | None = None, split: dict[str, int] | None = None, seed_prompt: Prompt | str | None = None,
            checkpoint_dir: str | Path | None = None, progress: ProgressFn | bool | None = None,
            evaluate_test: bool = True, eval_mode: str = "auto", chat: bool = False) -> PromptOptimizationResult:
        """Optimise a prompt for ``task`` with ``lm`` as the task model.

        Args:
            budget: evaluations (int) or :class:`PromptBudget` / dict with LM limits per role.
            optimizer_lm / judge_lm: the proposer / judge models (default: ``lm``); usage is accounted
                under the roles ``optimizer`` and ``judge``.
            seed: every random choice of the run derives from it (0 included).
            splits / split: explicit splits, or ``task.split(**split)`` (default
                ``{"seed": 0, "n_train": 50, "n_val": 20, "n_test": 100}``, shrunk to fit small tasks).
            seed_prompt: starting prompt, or its instruction as a str (default: the task's instruction, no
                exemplars).
            checkpoint_dir: where ``checkpoint.json`` lives; an existing one is resumed.
            progress: ``progress(done, total, message)`` after each evaluation; ``True`` prints a line per
                evaluation (and before the test scoring) to stderr.
            evaluate_test: also score the best and the seed prompt on the test split.
            eval_mode / chat: passed to :func:`lmopt.prompt.evaluate_prompt`.
        """
        if not isinstance(task, Task):
            raise TypeError(f"task must be an lmopt.data.Task, got {type(task).__name__}")
        if not isinstance(lm, LM):
            raise TypeError(f"lm must be an lmopt.lm.LM, got {type(lm).__name__}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an int, got {seed!r}")
        progress = resolve_progress(progress)
        pbudget = PromptBudget.from_any(budget)
        if splits is None:
            splits = _default_splits(task, split)
        if not splits.validation:
            raise ValueError("the validation split is empty; prompt optimisation needs n_val >= 1")
        seed_prompt = Prompt(task.instruction) if seed_prompt is None else seed_prompt
        if isinstance(seed_prompt, str):
            seed_prompt = Prompt(seed_prompt)
        if not isinstance(seed_prompt, Prompt):
            raise TypeError(f"seed_prompt must be a Prompt or a str, got {type(seed_prompt).__name__}")
        if not (seed_prompt.instruction.strip() or seed_prompt.exemplars):
            raise ValueError(f"task {task.name!r} has no seed instruction; pass seed_prompt=Prompt('...') "
                             "with a starting instruction")
        optimizer_lm = optimizer_lm or lm
        judge_lm = judge_lm or optimizer_lm
        run_meter = UsageMeter(pbudget.lm)
        wrapped: dict[int, LM] = {}

        def wrap(x: LM) -> LM:
            if id(x) not in wrapped:
                wrapped[id(x)] = LM(x.backend, cache=x.cache, meter=_ForwardingMeter(run_meter, x.meter),
                                    recorder=x.recorder)
            return wrapped[id(x)]

        run_lm, run_opt, run_judge = wrap(lm), wrap(optimizer_lm), wrap(judge_lm)
        # The run's identity: everything that changes its result. A checkpoint of another identity is refused.
        meta = {"version": CHECKPOINT_VERSION, "method": self.name, "hparams": self.hparams, "seed": seed,
                "budget": pbudget.to_dict(), "seed_prompt": seed_prompt.to_dict(), "task": _task_identity(task),
                "splits": {name: _fingerprint([(e.input, e.target) for e in part]) for name, part in
                           (("train", splits.train), ("validation", splits.validation), ("test", splits.test))},
                "lm": lm.name, "optimizer_lm": optimizer_lm.name, "judge_lm": judge_lm.name,
                "eval_mode": eval_mode, "chat": chat, "evaluate_test": evaluate_test}
        fp = _fingerprint(meta)
        ckpt = Path(checkpoint_dir) / "checkpoint.json" if checkpoint_dir is not None else None
        state: dict[str, Any] = {"fingerprint": fp, "meta": meta, "journal": {}, "usage": {}}
        if ckpt is not None and ckpt.exists():
            saved = read_json(ckpt)
            if saved.get("fingerprint") != fp:
                old = saved.get("meta") or {}
                differ = sorted(k for k in {*old, *meta} if _fingerprint(old.get(k)) != _fingerprint(meta.get(k)))
                raise ValueError(f"{ckpt} belongs to a different run ({', '.join(differ) or 'fingerprint'} "
                                 "differ); to start a fresh run pass another checkpoint_dir or delete that file")
            if saved.get("result") is not None:
                return PromptOptimizationResult.from_dict(saved["result"])
            state = saved
            run_meter.load_state_dict(saved.get("usage", {}))

        def save(result: dict[str, Any] | None = None) -> None:
            if ckpt is None:
                return
            state["usage"] = run_meter.state_dict()
            state["result"] = result
            write_json_atomic(ckpt, state)

        ctx = RunContext(method=self.name, task=task, splits=splits, lm=run_lm, optimizer_lm=run_opt,
                         judge_lm=run_judge, seed=seed, budget=pbudget, journal=state["journal"], save=save,
                         progress=progress, eval_kwargs={"mode": eval_mode, "chat": chat})
        t0 = time.perf_counter()
        stop_reason = "finished"
        try:
            ctx.evaluate(seed_prompt, source="seed")
            self._optimize(ctx)
        except StopRun as stop:
            stop_reason = stop.reason
        if ctx.best is None:
            raise RuntimeError("the budget did not allow a single evaluation (not even the seed prompt); "
                               "raise the evaluation or LM budget")
        self._finalize(ctx)
        best_score, best = ctx.best
        seed_val = ctx.score_of(seed_prompt)
        test_score = seed_test = None
        if evaluate_test and splits.test:
            ctx.tick(f"{self.name}: scoring the best and the seed prompt on {len(splits.test)} test examples")
            try:
                test_score = ctx.evaluate_on(best, splits.test, "test")["score"]
                seed_test = ctx.evaluate_on(seed_prompt, splits.test, "test")["score"]
            except StopRun as stop:
                stop_reason += f"; test evaluation skipped ({stop.reason})"
        result = PromptOptimizationResult(
            method=self.name, task=task.name, best_prompt=best, val_score=best_score, test_score=test_score,
            seed_prompt=seed_prompt, seed_val_score=seed_val, seed_test_score=seed_test, history=ctx.history,
            usage=run_meter.report(), n_evaluations=ctx.evaluations_used, stop_reason=stop_reason,
            parse_failures=ctx.parse_failures, wall_time_s=round(time.perf_counter() - t0, 3),
            config={"hparams": self.hparams, "seed": seed, "budget": pbudget.to_dict(), "paper": self.paper})
        save(result.to_dict())
        return result

    def _finalize(self, ctx: RunContext) -> None:
        """Hook run after the search (e.g. SPO scores its final prompt on validation)."""


def _default_splits(task: Task, split: dict[str, int] | None) -> Splits:
    s = {**DEFAULT_SPLIT, **(split or {})}
    unknown = set(s) - set(DEFAULT_SPLIT)
    if unknown:
        raise ValueError(f"unknown split key(s) {sorted(unknown)}; allowed: {sorted(DEFAULT_SPLIT)}")
    n = len(task.examples)
    if s["n_train"] + s["n_val"] + s["n_test"] > n and split is None:
        # shrink the defaults for small tasks: keep validation, then train, then test
        s["n_val"] = min(s["n_val"], max(1, n // 4))
        s["n_train"] = min(s["n_train"], max(0, (n - s["n_val"]) // 2))
        s["n_test"] = n - s["n_val"] - s["n_train"]
    return task.split(s["seed"], s["n_train"], s["n_val"], s["n_test"])
