"""Prompt optimisers: random search, APE, OPRO, EASE and INSTINCT (SPO and EXPO live in their own modules).

Each is an :class:`~lmopt.prompt.base.Optimizer`: ``Method(**hparams).run(task, lm, budget)``. All spend
the same unit of budget — one evaluation of a new prompt on the validation split — so they can be compared
at equal cost; proposals by the optimiser LM are accounted separately under the role ``optimizer``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..bandits import BatchUCB, NeuralUCB
from ..data.task import Example
from .base import Optimizer, RunContext, StopRun, prompt_key, prompt_text
from .evaluator import Prompt
from .features import as_matrix, embedder_identity, resolve_embedder
from .transport import exemplar_ot_costs


def _check_int(name: str, v: Any, lo: int = 0) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")


def _sample_exemplars(rng: np.random.Generator, pool: list[Example], k: int) -> tuple[Example, ...]:
    idx = rng.choice(len(pool), size=k, replace=False)
    return tuple(pool[int(i)] for i in idx)


def _demo_block(ctx: RunContext, demos: tuple[Example, ...]) -> str:
    return "\n\n".join(f"Input: {e.input}\nOutput: {e.target}" for e in demos)


def generate_instructions(ctx: RunContext, n: int, *, n_demos: int = 5, per_call: int = 10,
                          temperature: float = 0.9, stream: str = "ape",
                          sources: dict[str, str] | None = None) -> list[str]:
    """APE forward generation (Zhou et al., arXiv 2211.01910, §3.1): the optimiser LM infers the
    instruction from random input→output demonstrations. Returns up to ``n`` distinct instructions; when
    ``sources`` is given, it maps each to the generator input (demonstrations and request) that produced it."""
    pool = ctx.splits.train
    if not pool:
        raise ValueError("instruction generation needs training examples; set split n_train >= 1")
    rng = ctx.rng(stream)
    seen: dict[str, None] = {}
    attempts = 0
    while len(seen) < n and attempts < max(3, 3 * (n // max(1, per_call) + 1)):
        demos = _sample_exemplars(rng, pool, min(n_demos, len(pool)))
        msg = ("Someone was given one instruction and then produced the outputs below for the inputs.\n\n"
               f"{_demo_block(ctx, demos)}\n\nWhat instruction were they given? Write it as one imperative "
               "sentence between <prompt> and </prompt>.")
        props = ctx.propose([{"role": "user", "content": msg}], tag="prompt", plain=True,
                            temperature=temperature, n=min(per_call, n - len(seen)), seed=attempts,
                            what="instruction", max_new_tokens=64)
        for p in props:
            seen.setdefault(p, None)
            if sources is not None:
                sources.setdefault(p, msg)
        attempts += 1
    return list(seen)[:n]


def pool_rng(pool_seed: int) -> np.random.Generator:
    """The generator of a fixed candidate pool: the same for every run seed (EASE and random search share it,
    so with the same ``pool_seed`` they search the same candidates)."""
    return np.random.default_rng([pool_seed, 0xEA5E])


def draw_exemplar_pool(rng: np.random.Generator, n_train: int, n_shots: int, n: int,
                       n_instr: int) -> list[tuple[int, tuple[int, ...]]]:
    """Up to ``n`` distinct (instruction index, ordered ``n_shots`` training indices) candidates."""
    seen: dict[tuple[int, tuple[int, ...]], None] = {}
    tries = 0
    while len(seen) < n and tries < 20 * n:
        tries += 1
        idx = tuple(int(i) for i in rng.choice(n_train, n_shots, replace=False))
        seen.setdefault((int(rng.integers(n_instr)), idx), None)
    return list(seen)


class RandomSearch(Optimizer):
    """Random search baseline: random ordered ``n_shots`` exemplar sets from the training split, each with
    an instruction drawn uniformly from ``instructions`` (default: the seed instruction only). The
    baseline of EASE (arXiv 2405.16122, §5) and of most prompt-optimisation papers.

    With ``pool_seed`` the candidates are a fixed pool of ``n_candidates`` drawn from that seed — the same
    pool as ``EASE(pool_seed=...)`` with the same ``n_shots`` and ``n_candidates`` (EASE's best-of-N baseline
    over one domain) — visited in the run seed's random order; the run seed then changes only the order and,
    where the splits are resampled, the examples, so a shared call cache makes further seeds cheap."""

    name = "random"
    paper = "baseline (e.g. EASE arXiv 2405.16122 §5)"

    def __init__(self, n_shots: int = 5, instructions: list[str] | None = None, n_candidates: int = 1000,
                 pool_seed: int | None = None) -> None:
        _check_int("n_shots", n_shots)
        _check_int("n_candidates", n_candidates, 1)
        if n_shots == 0 and not instructions:
            raise ValueError("random search needs something to search: n_shots >= 1 or a list of instructions")
        if pool_seed is not None:
            _check_int("pool_seed", pool_seed)
            if n_shots == 0:
                raise ValueError("pool_seed draws a pool of exemplar sets: it needs n_shots >= 1")
        super().__init__(n_shots=n_shots, instructions=list(instructions or []), n_candidates=n_candidates,
                         pool_seed=pool_seed)

    def _optimize(self, ctx: RunContext) -> None:
        rng = ctx.rng("random")
        pool = ctx.splits.train
        k = self.hparams["n_shots"]
        if k > len(pool):
            raise ValueError(f"n_shots={k} exceeds the {len(pool)} training examples; raise split n_train")
        instr = [ctx.task.instruction, *self.hparams["instructions"]]
        if self.hparams["pool_seed"] is not None:  # a fixed pool, visited in this run's random order
            cands = draw_exemplar_pool(pool_rng(self.hparams["pool_seed"]), len(pool), k,
                                       self.hparams["n_candidates"], len(instr))
            for c in rng.permutation(len(cands)):
                j, idx = cands[int(c)]
                ctx.evaluate(Prompt(instr[j], tuple(pool[i] for i in idx)), source="random")
            raise StopRun("every candidate of the pool was evaluated")
        stale = 0
        while stale < 50:
            p = Prompt(instr[int(rng.integers(len(instr)))], _sample_exemplars(rng, pool, k) if k else ())
            if ctx.score_of(p) is not None:
                stale += 1
                continue
            stale = 0
            ctx.evaluate(p, source="random")


class APE(Optimizer):
    """APE — Automatic Prompt Engineer (Zhou et al., ICLR 2023, arXiv 2211.01910, Alg. 1).

    Proposal: forward generation of ``n_subsamples × prompts_per_subsample`` instructions from random
    demonstration subsets (``n_demos`` each) by the optimiser LM. Selection (``evaluation``):

    * ``"full"`` (default): each distinct candidate is scored on the whole validation split, in proposal order,
      until the evaluation budget is spent; the best is kept. All candidates see the same examples.
    * ``"subsample"`` (the authors' ``exec_accuracy`` evaluator): each candidate is scored on a fresh random
      sample of ``n_samples`` validation examples (default 30).
    * ``"ucb"`` (the authors' bandit evaluator, §3.1 "Efficient score estimation"): ``ucb_rounds`` rounds
      (default 20), each scoring the ``ucb_prompts_per_round`` candidates (default a third of them) with the
      highest upper bound (:class:`lmopt.bandits.BatchUCB`, ``c = ucb_c`` = 1.0) on fresh samples of
      ``n_samples`` examples (default 5), as the authors' ``simple_ape``.

    In the two sampled modes a sample of m examples costs m / n_val of an evaluation, one evaluation is kept
    to score the chosen candidate on the whole validation split (so that ``val_score`` means the same for
    every method), and the candidate chosen is the one with the best sampled mean. (The paper's iterative
    Monte-Carlo resampling of candidates is not implemented.)
    """

    name = "ape"
    paper = "arXiv 2211.01910 (APE), Alg. 1, forward generation"

    def __init__(self, n_subsamples: int = 3, prompts_per_subsample: int = 30, n_demos: int = 5,
                 temperature: float = 0.9, n_shots: int = 0, evaluation: str = "full", n_samples: int | None = None,
                 ucb_rounds: int = 20, ucb_prompts_per_round: int | None = None, ucb_c: float = 1.0) -> None:
        for k, v in (("n_subsamples", n_subsamples), ("prompts_per_subsample", prompts_per_subsample),
                     ("n_demos", n_demos), ("ucb_rounds", ucb_rounds)):
            _check_int(k, v, 1)
        _check_int("n_shots", n_shots)
        if evaluation not in ("full", "subsample", "ucb"):
            raise ValueError(f"evaluation must be 'full', 'subsample' or 'ucb', got {evaluation!r}")
        if n_samples is None:
            n_samples = {"full": 0, "subsample": 30, "ucb": 5}[evaluation]
        elif evaluation == "full":
            raise ValueError("n_samples applies to evaluation='subsample' or 'ucb' only")
        else:
            _check_int("n_samples", n_samples, 1)
        if ucb_prompts_per_round is not None:
            _check_int("ucb_prompts_per_round", ucb_prompts_per_round, 1)
        if not isinstance(ucb_c, (int, float)) or ucb_c < 0:
            raise ValueError(f"ucb_c must be a number >= 0, got {ucb_c!r}")
        super().__init__(n_subsamples=n_subsamples, prompts_per_subsample=prompts_per_subsample,
                         n_demos=n_demos, temperature=temperature, n_shots=n_shots, evaluation=evaluation,
                         n_samples=n_samples, ucb_rounds=ucb_rounds, ucb_prompts_per_round=ucb_prompts_per_round,
                         ucb_c=ucb_c)

    def _optimize(self, ctx: RunContext) -> None:
        h = self.hparams
        n_val = len(ctx.splits.validation)
        if h["evaluation"] != "full" and h["n_samples"] > n_val:
            raise ValueError(f"n_samples={h['n_samples']} exceeds the {n_val} validation examples; raise n_val "
                             "or lower n_samples")
        total = h["n_subsamples"] * h["prompts_per_subsample"]
        if h["evaluation"] == "full":
            want = min(total, max(1, ctx.evaluations_left))  # only as many candidates as the budget can score
        elif h["evaluation"] == "subsample":
            want = min(total, max(1, (ctx.evaluations_left - 1) * n_val // h["n_samples"]))
        else:
            want = total
        cands = generate_instructions(ctx, want, n_demos=h["n_demos"], per_call=h["prompts_per_subsample"],
                                      temperature=h["temperature"])
        ctx.log("candidates", n=len(cands))
        shots = _sample_exemplars(ctx.rng("ape-shots"), ctx.splits.train, h["n_shots"]) if h["n_shots"] else ()
        prompts = [Prompt(c, shots) for c in cands]
        if h["evaluation"] == "full":
            for p in prompts:
                ctx.evaluate(p, source="ape")
            return
        means = self._sampled_means(ctx, prompts)
        if means:
            # the chosen candidate: best sampled mean, ties broken as the authors' descending argsort; then
            # scored on the whole validation split
            idx = sorted(means)
            best = idx[int(np.argsort([means[i] for i in idx])[::-1][0])]
            ctx.evaluate(prompts[best], source=f"ape-{h['evaluation']}", sampled_mean=means[best])

    def _sampled_means(self, ctx: RunContext, prompts: list[Prompt]) -> dict[int, float]:
        """Sampled mean score per candidate index, spending the budget but one evaluation."""
        h = self.hparams
        val, m = ctx.splits.validation, h["n_samples"]
        rng = ctx.rng("ape-samples")
        reserve = len(val)  # one full evaluation for the chosen candidate

        def sample_score(p: Prompt, **info: Any) -> float | None:
            if ctx.sample_examples_left - m < reserve:
                return None
            return ctx.evaluate_sample(p, [val[int(i)] for i in rng.choice(len(val), m, replace=False)],
                                       source=f"ape-{h['evaluation']}", **info)

        if h["evaluation"] == "subsample":
            means = {}
            for i, p in enumerate(prompts):
                s = sample_score(p, candidate=i)
                if s is None:
                    break
                means[i] = s
            return means
        bandit = BatchUCB(len(prompts), c=h["ucb_c"], seed=int(rng.integers(2**31)))
        per_round = h["ucb_prompts_per_round"] or max(1, int(len(prompts) * 0.334))  # the authors' 1/3
        for r in range(h["ucb_rounds"]):
            arms = bandit.choose(per_round)
            scores = []
            for i in arms:
                s = sample_score(prompts[i], candidate=i, round=r)
                if s is None:
                    break
                scores.append(s)
            bandit.update(arms[:len(scores)], scores, m)
            if len(scores) < len(arms):
                break
        ctx.log("ape_ucb", counts=bandit.counts.tolist(), means=bandit.means().tolist())
        return {i: float(bandit.means()[i]) for i in range(len(prompts)) if bandit.counts[i] > 0}


class OPRO(Optimizer):
    """OPRO — Optimization by PROmpting (Yang et al., ICLR 2024, arXiv 2309.03409, §2–3, Fig. 3).

    Each step the optimiser LM sees a meta-prompt with the ``top_k`` best instructions so far in ascending
    order of score (0–100) and ``n_exemplars`` random training problems showing where the instruction goes,
    and samples ``proposals_per_step`` new instructions (temperature 1.0) inside ``<INS>`` tags; every new
    one is scored. Stops when the evaluation budget is spent or ``max_failed_steps`` steps in a row
    produced nothing new. As in the authors' code: only instructions scoring at least ``score_threshold``
    (0.3) are shown in the meta-prompt, and a proposal longer than ``max_instruction_chars`` (500) or still
    containing "INS" (a leaked tag) is dropped unscored (logged as ``opro_filtered``).
    """

    name = "opro"
    paper = "arXiv 2309.03409 (OPRO), §2-3"

    def __init__(self, top_k: int = 20, n_exemplars: int = 3, proposals_per_step: int = 8,
                 temperature: float = 1.0, max_failed_steps: int = 3, score_threshold: float = 0.3,
                 max_instruction_chars: int = 500) -> None:
        for k, v in (("top_k", top_k), ("proposals_per_step", proposals_per_step),
                     ("max_failed_steps", max_failed_steps), ("max_instruction_chars", max_instruction_chars)):
            _check_int(k, v, 1)
        _check_int("n_exemplars", n_exemplars)
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must lie in [0, 1] (scores are accuracies), got {score_threshold}")
        super().__init__(top_k=top_k, n_exemplars=n_exemplars, proposals_per_step=proposals_per_step,
                         temperature=temperature, max_failed_steps=max_failed_steps, score_threshold=score_threshold,
                         max_instruction_chars=max_instruction_chars)

    def meta_prompt(self, ctx: RunContext, rng: np.random.Generator) -> str:
        h = self.hparams
        scored = sorted(((s, ctx.prompts[k].instruction) for k, s in ctx.scores.items()
                         if s >= h["score_threshold"]), key=lambda x: x[0])
        lines = [f"text:\n{ins}\nscore:\n{round(100 * s)}\n" for s, ins in scored[-h["top_k"]:]]
        pool = ctx.splits.train
        k = min(h["n_exemplars"], len(pool))
        ex = _sample_exemplars(rng, pool, k) if k else ()
        problems = "\n".join(f"input:\nQ: <INS>\n{e.input}\nA:\noutput:\n{e.target}\n" for e in ex)
        return ("Your job is to write an instruction <INS> for a task. Earlier instructions and their "
                "accuracy (0 to 100, higher is better) are listed from worst to best.\n\n"
                + "\n".join(lines) + "\nSome task problems, with <INS> showing where the instruction is "
                "placed:\n\n" + problems + "\nWrite a new instruction that differs from every instruction "
                "above and should score higher than all of them. Keep it short and general. Put it between "
                "<INS> and </INS>.")

    def _optimize(self, ctx: RunContext) -> None:
        h = self.hparams
        rng = ctx.rng("opro")
        failed = 0
        step = 0
        while failed < h["max_failed_steps"]:
            props = ctx.propose([{"role": "user", "content": self.meta_prompt(ctx, rng)}], tag="INS",
                                temperature=h["temperature"], n=h["proposals_per_step"], seed=step,
                                what="instruction", max_new_tokens=96)
            step += 1
            kept = []
            for p in props:
                if len(p) > h["max_instruction_chars"] or "INS" in p:
                    ctx.log("opro_filtered", instruction=p[:300], chars=len(p))
                else:
                    kept.append(p)
            new = [p for p in dict.fromkeys(kept) if ctx.score_of(Prompt(p)) is None]
            if not new:
                failed += 1
                continue
            failed = 0
            for p in new:
                ctx.evaluate(Prompt(p), source=f"opro step {step}")


def neural_bandit_search(ctx: RunContext, candidates: list[Prompt], features: np.ndarray, *, n_initial: int,
                         bandit: NeuralUCB, stream: str) -> None:
    """Shared NeuralUCB loop of EASE / INSTINCT: ``n_initial`` random candidates, then each round re-fit the
    surrogate on all scores, pick the unevaluated candidate with the largest UCB, score it, update ``U``."""
    if len(candidates) != features.shape[0]:
        raise ValueError("one feature row per candidate is needed")
    rng = ctx.rng(stream)
    chosen: list[int] = []
    order = [int(i) for i in rng.permutation(len(candidates))]
    for i in order[: min(n_initial, len(candidates))]:
        y = ctx.evaluate(candidates[i], source="initial")
        bandit.add_observation(features[i], y)
        chosen.append(i)
    while len(chosen) < len(candidates):
        if ctx.evaluations_left <= 0:
            raise StopRun("evaluation budget spent")
        bandit.fit()
        i = bandit.select(features, exclude=chosen)
        mu, sig = bandit.ucb(features[i: i + 1])
        y = ctx.evaluate(candidates[i], source="ucb", predicted=float(mu[0]), bonus=float(sig[0]))
        bandit.update(features[i], y)
        chosen.append(i)


class EASE(Optimizer):
    """EASE — Efficient ordering-Aware automated Selection of Exemplars (Wu et al., NeurIPS 2024,
    arXiv 2405.16122, Alg. 1).

    The search space is ordered ``n_shots``-subsets of the training split (optionally each paired with an
    instruction: ``joint=True``, the paper's §4.3 extension). Each candidate is embedded *as one string* of
    its "Input: …\\nOutput: …" exemplars, in order, as the released code does (``embed_instruction=True``
    prepends the instruction, which narrows the spread of candidate embeddings; with ``joint=True`` the
    instruction is always embedded, since it is part of what is searched) by a sentence embedder (paper:
    all-mpnet-base-v2; default here: the embedded all-MiniLM-L6-v2, which reads at most 256 word pieces:
    later exemplars of a long candidate are cut off, and order changes move the embedding little).
    :class:`~lmopt.bandits.NeuralUCB` (3×100 ReLU MLP re-trained each round for 1000 Adam steps at lr 1e-3;
    λ = 0.1, ν = 0.01 as in the released run script) chooses what to evaluate after ``n_initial`` random
    candidates (paper: 40 of 165).

    Where the candidates come from (``search``):

    * ``"released"`` — the authors' loop: every round draws ``pool_batches`` (20) batches of
      ``pool_batch_size`` (2500) fresh random ordered subsets; in each batch the ``batch_keep`` (50) with the
      smallest optimal-transport cost to the validation set are kept (exact OT, uniform weights, cost
      1 − cosine between the embeddings of single "Input/Output" exemplars and of the validation examples
      with their answers; :mod:`lmopt.prompt.transport`), the kept ones are embedded, and the one with the
      largest UCB over all batches is evaluated. The search stops once a candidate scores 1.0 on
      validation, as the released code does. A candidate already evaluated is skipped (the released code
      could pick it again; among ~10⁹ ordered subsets this is rare). Each round costs 50,000 small OT
      problems and 1000 embeddings: about 9 s on 2 CPU cores (measured in ``benchmarks.prompt_opt``: 280 s
      per 30-evaluation run with SmolLM2 and MiniLM, against 89 s for the pool search).
    * ``"pool"`` (default) — ``n_candidates`` random candidates are drawn once (with ``pool_seed`` set, the
      same pool for every run seed: the call cache then makes further seeds cheap), optionally reduced by
      the same OT cost to the ``ot_keep`` best (``ot_filter=True``), and the bandit picks among them. It is
      the default because the released loop's per-round OT and embedding work (above) exceeds the model
      time of an evaluation on small CPU budgets; the pool is the paper's Alg. 1 with a fixed domain.
    """

    name = "ease"
    paper = "arXiv 2405.16122 (EASE), Alg. 1"

    def __init__(self, n_shots: int = 5, n_candidates: int = 1000, n_initial: int = 40, ot_filter: bool = False,
                 ot_keep: int = 200, joint: bool = False, instructions: list[str] | None = None,
                 n_instructions: int = 10, embedder: Any = "minilm", lam: float = 0.1, nu: float = 0.01,
                 train_steps: int = 1000, lr: float = 1e-3, hidden: int = 100, hidden_layers: int = 3,
                 embed_instruction: bool = False, search: str = "pool", pool_batches: int = 20,
                 pool_batch_size: int = 2500, batch_keep: int = 50, pool_seed: int | None = None) -> None:
        _check_int("n_shots", n_shots, 1)
        _check_int("n_candidates", n_candidates, 1)
        _check_int("n_initial", n_initial)
        _check_int("ot_keep", ot_keep, 1)
        if search not in ("pool", "released"):
            raise ValueError(f"search must be 'pool' or 'released', got {search!r}")
        for k, v in (("pool_batches", pool_batches), ("pool_batch_size", pool_batch_size),
                     ("batch_keep", batch_keep)):
            _check_int(k, v, 1)
        if batch_keep > pool_batch_size:
            raise ValueError(f"batch_keep={batch_keep} exceeds pool_batch_size={pool_batch_size}")
        if pool_seed is not None:
            _check_int("pool_seed", pool_seed)
        self.embedder = embedder
        super().__init__(n_shots=n_shots, n_candidates=n_candidates, n_initial=n_initial, ot_filter=ot_filter,
                         ot_keep=ot_keep, joint=joint, instructions=list(instructions or []),
                         n_instructions=n_instructions, embedder=embedder_identity(embedder), lam=lam, nu=nu,
                         train_steps=train_steps, lr=lr, hidden=hidden, hidden_layers=hidden_layers,
                         embed_instruction=embed_instruction, search=search, pool_batches=pool_batches,
                         pool_batch_size=pool_batch_size, batch_keep=batch_keep, pool_seed=pool_seed)

    def _texts(self, ctx: RunContext, cands: list[Prompt]) -> list[str]:
        if self.hparams["embed_instruction"] or self.hparams["joint"]:
            return [prompt_text(ctx.task, c) for c in cands]
        return [ctx.task.format_exemplars(c.exemplars).strip() for c in cands]  # exemplars only, as released

    def _ot_embeddings(self, ctx: RunContext, embed: Any) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of each training example and each validation example as a one-exemplar string."""
        one = [ctx.task.format_exemplars((e,)).strip() for e in ctx.splits.train]
        val = [ctx.task.format_exemplars((e,)).strip() for e in ctx.splits.validation]
        return as_matrix(embed(one), len(one)), as_matrix(embed(val), len(val))

    def _optimize(self, ctx: RunContext) -> None:
        h = self.hparams
        pool = ctx.splits.train
        if h["n_shots"] > len(pool):
            raise ValueError(f"n_shots={h['n_shots']} exceeds the {len(pool)} training examples; raise n_train")
        instr = [ctx.task.instruction]
        if h["joint"]:
            instr += h["instructions"] or generate_instructions(ctx, h["n_instructions"], stream="ease-instr")
        embed = resolve_embedder(self.embedder)
        if h["search"] == "released":
            self._released(ctx, instr, embed)
            return
        rng = ctx.rng("ease-candidates") if h["pool_seed"] is None else pool_rng(h["pool_seed"])
        idx_rows = draw_exemplar_pool(rng, len(pool), h["n_shots"], h["n_candidates"], len(instr))
        if h["ot_filter"] and len(idx_rows) > h["ot_keep"]:
            one_emb, val_emb = self._ot_embeddings(ctx, embed)
            d = exemplar_ot_costs(np.array([r[1] for r in idx_rows]), one_emb, val_emb)
            keep = np.argsort(d, kind="stable")[: h["ot_keep"]]
            idx_rows = [idx_rows[int(i)] for i in sorted(keep)]
            ctx.log("ot_filter", kept=len(idx_rows), distance_min=float(d.min()), distance_max=float(d.max()))
        cands = [Prompt(instr[j], tuple(pool[i] for i in idx)) for j, idx in idx_rows]
        ctx.tick(f"ease: embedding {len(cands)} candidate exemplar sets")
        feats = as_matrix(embed(self._texts(ctx, cands)), len(cands))
        bandit = self._bandit(ctx, feats.shape[1])
        ctx.log("candidates", n=len(cands), dim=int(feats.shape[1]))
        neural_bandit_search(ctx, cands, feats, n_initial=h["n_initial"], bandit=bandit, stream="ease")

    def _bandit(self, ctx: RunContext, dim: int) -> NeuralUCB:
        h = self.hparams
        return NeuralUCB(dim, hidden=h["hidden"], hidden_layers=h["hidden_layers"], lam=h["lam"], nu=h["nu"],
                         train_steps=h["train_steps"], lr=h["lr"], seed=ctx.seed)

    def _draw(self, rng: np.random.Generator, n: int, n_pool: int, n_instr: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` random ordered ``n_shots``-subsets of ``range(n_pool)`` and an instruction index for each."""
        order = np.argsort(rng.random((n, n_pool)), axis=1)[:, : self.hparams["n_shots"]]
        return order, rng.integers(n_instr, size=n)

    def _released(self, ctx: RunContext, instr: list[str], embed: Any) -> None:
        h = self.hparams
        pool = ctx.splits.train
        rng = ctx.rng("ease-released")

        def prompt_of(idx: np.ndarray, j: int) -> Prompt:
            return Prompt(instr[int(j)], tuple(pool[int(i)] for i in idx))

        bandit = None
        idx0, j0 = self._draw(rng, h["n_initial"], len(pool), len(instr))
        init = [prompt_of(i, j) for i, j in zip(idx0, j0)]
        feats0 = as_matrix(embed(self._texts(ctx, init)), len(init)) if init else []
        for x, p in zip(feats0, init):
            y = ctx.evaluate(p, source="initial")
            if bandit is None:
                bandit = self._bandit(ctx, int(x.shape[0]))
            bandit.add_observation(x, y)
            if y >= 1.0:
                raise StopRun("a candidate scored 1.0 on validation")
        one_emb, val_emb = self._ot_embeddings(ctx, embed)
        while True:
            if ctx.evaluations_left <= 0:
                raise StopRun("evaluation budget spent")
            if bandit is not None:
                bandit.fit()
            best: tuple[float, Prompt, np.ndarray, float, float] | None = None
            ctx.tick(f"ease: OT pre-filter of {h['pool_batches']}×{h['pool_batch_size']} fresh candidates")
            for _ in range(h["pool_batches"]):
                idx, js = self._draw(rng, h["pool_batch_size"], len(pool), len(instr))
                d = exemplar_ot_costs(idx, one_emb, val_emb)
                keep = np.argsort(d, kind="stable")[: h["batch_keep"]]
                cands = [prompt_of(idx[k], js[k]) for k in keep]
                fresh = [c for c in cands if ctx.score_of(c) is None]
                if not fresh:
                    continue
                X = as_matrix(embed(self._texts(ctx, fresh)), len(fresh))
                if bandit is None:
                    bandit = self._bandit(ctx, X.shape[1])
                mu, sig = bandit.ucb(X)
                a = int(np.argmax(mu + sig))
                if best is None or mu[a] + sig[a] > best[0]:
                    best = (float(mu[a] + sig[a]), fresh[a], X[a], float(mu[a]), float(sig[a]))
            if best is None:
                raise StopRun("every pre-filtered candidate was already evaluated")
            _, p, x, mu_a, sig_a = best
            y = ctx.evaluate(p, source="ucb", predicted=mu_a, bonus=sig_a)
            bandit.update(x, y)
            if y >= 1.0:
                raise StopRun("a candidate scored 1.0 on validation")


class INSTINCT(Optimizer):
    """INSTINCT — INSTruction optimization usIng Neural bandits Coupled with Transformers (Lin et al.,
    ICML 2024, arXiv 2310.02905, Alg. 1).

    A NeuralUCB surrogate (1 hidden layer of 100, λ = 0.1, ν = 1) over features of each candidate
    instruction taken from a pre-trained transformer: in white-box mode (``features="hidden"``, the default
    ``"auto"`` when the task LM is a :class:`~lmopt.lm.LocalLM`) the open model's last-token hidden state
    of the instruction, rows L2-normalised; ``features="generator"`` the last-token hidden state of the
    generator's input followed by the instruction (the demonstrations and request the candidate was
    generated from — closest to the released code, whose features are the generator's input: soft prompt,
    demonstrations and "The instruction was to"; the instruction is appended because here several
    candidates share one generator input; the seed instruction and given ``candidates`` have none and use
    their own text), z-scored by the surrogate and not L2-normalised; otherwise sentence embeddings
    (``"embedding"``, black-box models).

    Deviation: the paper searches a soft-prompt space whose points an open LLM turns into instructions
    (InstructZero's generator). Here candidates come from any instruction generator — by default APE
    forward generation by the optimiser LM (``n_candidates`` instructions, raised to one more than the
    evaluation budget so that the pool never runs out before the budget does), plus the seed instruction.
    Known issue (seen with small proposer models): candidates may degenerate into copied exemplars; such
    candidates are kept (they are legitimate prompts) and visible in the history.
    """

    name = "instinct"
    paper = "arXiv 2310.02905 (INSTINCT), Alg. 1"

    def __init__(self, n_candidates: int = 50, n_initial: int = 10, features: str = "auto",
                 embedder: Any = "minilm", candidates: list[str] | None = None, lam: float = 0.1,
                 nu: float = 1.0, train_steps: int = 1000, lr: float = 1e-3, hidden: int = 100,
                 hidden_layers: int = 1, temperature: float = 0.9) -> None:
        _check_int("n_candidates", n_candidates, 1)
        _check_int("n_initial", n_initial)
        if features not in ("auto", "hidden", "generator", "embedding"):
            raise ValueError(f"features must be 'auto', 'hidden', 'generator' or 'embedding', got {features!r}")
        self.embedder = embedder
        super().__init__(n_candidates=n_candidates, n_initial=n_initial, features=features,
                         embedder=embedder_identity(embedder),
                         candidates=list(candidates or []), lam=lam, nu=nu, train_steps=train_steps, lr=lr,
                         hidden=hidden, hidden_layers=hidden_layers, temperature=temperature)

    def _features(self, ctx: RunContext, texts: list[str], sources: dict[str, str]) -> tuple[np.ndarray, str]:
        mode = self.hparams["features"]
        has_hidden = hasattr(ctx.lm.backend, "hidden_states")
        if mode in ("hidden", "generator") and not has_hidden:
            raise ValueError(f"features={mode!r} needs a white-box task LM (LocalLM); {ctx.lm.name!r} has no "
                             "hidden states — use features='embedding'")
        if mode == "generator":
            inputs = [f"{sources[t]}\n<prompt>{t}" if t in sources else t for t in texts]
            return as_matrix(ctx.lm.hidden_states(inputs), len(texts)), "generator"
        if mode == "hidden" or (mode == "auto" and has_hidden):
            X = as_matrix(ctx.lm.hidden_states(texts), len(texts))
            X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
            return X, "hidden"
        return as_matrix(resolve_embedder(self.embedder)(texts), len(texts)), "embedding"

    def _optimize(self, ctx: RunContext) -> None:
        h = self.hparams
        cands = list(dict.fromkeys([ctx.task.instruction, *h["candidates"]]))
        # the pool must exceed the evaluation budget, or the search ends early and spends less than the
        # methods it is compared with
        n_pool = max(h["n_candidates"], ctx.evaluations_left + 1)
        sources: dict[str, str] = {}
        if len(cands) < n_pool + 1:
            gen = generate_instructions(ctx, n_pool + 1 - len(cands), temperature=h["temperature"],
                                        stream="instinct-gen", sources=sources)
            cands = list(dict.fromkeys(cands + gen))
        feats, kind = self._features(ctx, cands, {c: sources[c] for c in cands[1:] if c in sources})
        ctx.log("candidates", n=len(cands), features=kind, dim=int(feats.shape[1]))
        # INSTINCT's released surrogate draws its weights from N(0, 1)
        bandit = NeuralUCB(feats.shape[1], hidden=h["hidden"], hidden_layers=h["hidden_layers"], lam=h["lam"],
                           nu=h["nu"], train_steps=h["train_steps"], lr=h["lr"], seed=ctx.seed, init="normal")
        prompts = [Prompt(c) for c in cands]
        # the seed instruction was already evaluated by the run: feed it to the surrogate first
        seed_score = ctx.score_of(prompts[0])
        if seed_score is not None:
            bandit.add_observation(feats[0], seed_score)
        rest = list(range(1, len(prompts)))
        neural_bandit_search(ctx, [prompts[i] for i in rest], feats[rest], n_initial=h["n_initial"],
                             bandit=bandit, stream="instinct")


__all__ = ["APE", "EASE", "INSTINCT", "OPRO", "RandomSearch", "draw_exemplar_pool", "generate_instructions",
           "neural_bandit_search", "pool_rng", "prompt_key"]
