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


class RandomSearch(Optimizer):
    """Random search baseline: random ordered ``n_shots`` exemplar sets from the training split, each with
    an instruction drawn uniformly from ``instructions`` (default: the seed instruction only). The
    baseline of EASE (arXiv 2405.16122, §5) and of most prompt-optimisation papers."""

    name = "random"
    paper = "baseline (e.g. EASE arXiv 2405.16122 §5)"

    def __init__(self, n_shots: int = 5, instructions: list[str] | None = None) -> None:
        _check_int("n_shots", n_shots)
        if n_shots == 0 and not instructions:
            raise ValueError("random search needs something to search: n_shots >= 1 or a list of instructions")
        super().__init__(n_shots=n_shots, instructions=list(instructions or []))

    def _optimize(self, ctx: RunContext) -> None:
        rng = ctx.rng("random")
        pool = ctx.splits.train
        k = self.hparams["n_shots"]
        if k > len(pool):
            raise ValueError(f"n_shots={k} exceeds the {len(pool)} training examples; raise split n_train")
        instr = [ctx.task.instruction, *self.hparams["instructions"]]
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


def ot_distances(cand_idx: np.ndarray, pool_emb: np.ndarray, val_emb: np.ndarray, reg: float = 0.05,
                 iters: int = 200) -> np.ndarray:
    """Entropic optimal-transport cost (Sinkhorn, uniform marginals, cosine cost) between each candidate's
    exemplar embeddings (rows of ``pool_emb`` picked by ``cand_idx``, shape (N, k)) and the validation set."""
    pool_n = pool_emb / np.maximum(np.linalg.norm(pool_emb, axis=1, keepdims=True), 1e-12)
    val_n = val_emb / np.maximum(np.linalg.norm(val_emb, axis=1, keepdims=True), 1e-12)
    C_all = 1.0 - pool_n @ val_n.T  # (P, m)
    C = C_all[cand_idx]  # (N, k, m)
    N, k, m = C.shape
    K = np.exp(-C / reg)
    a, b = np.full((N, k), 1.0 / k), np.full((N, m), 1.0 / m)
    u = np.ones((N, k))
    for _ in range(iters):
        v = b / np.maximum(np.einsum("nkm,nk->nm", K, u), 1e-300)
        u = a / np.maximum(np.einsum("nkm,nm->nk", K, v), 1e-300)
    P = u[:, :, None] * K * v[:, None, :]
    return (P * C).sum(axis=(1, 2))


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
    ``n_candidates`` random candidates are drawn once; with ``ot_filter`` only the ``ot_keep`` with the
    smallest optimal-transport distance to the validation inputs are kept (the paper's OT pre-filter; the
    released code keeps it on, matches inputs and outputs, keeps the top 2% of a fresh pool each round and
    solves the transport exactly: not reproduced here). Then :class:`~lmopt.bandits.NeuralUCB`
    (3×100 ReLU MLP re-trained each round for 1000 Adam steps at lr 1e-3; λ = 0.1, ν = 0.01) selects
    which to evaluate after ``n_initial`` random ones (paper: 40 of 165).
    """

    name = "ease"
    paper = "arXiv 2405.16122 (EASE), Alg. 1"

    def __init__(self, n_shots: int = 5, n_candidates: int = 1000, n_initial: int = 40, ot_filter: bool = False,
                 ot_keep: int = 200, joint: bool = False, instructions: list[str] | None = None,
                 n_instructions: int = 10, embedder: Any = "minilm", lam: float = 0.1, nu: float = 0.01,
                 train_steps: int = 1000, lr: float = 1e-3, hidden: int = 100, hidden_layers: int = 3,
                 embed_instruction: bool = False) -> None:
        _check_int("n_shots", n_shots, 1)
        _check_int("n_candidates", n_candidates, 1)
        _check_int("n_initial", n_initial)
        _check_int("ot_keep", ot_keep, 1)
        self.embedder = embedder
        super().__init__(n_shots=n_shots, n_candidates=n_candidates, n_initial=n_initial, ot_filter=ot_filter,
                         ot_keep=ot_keep, joint=joint, instructions=list(instructions or []),
                         n_instructions=n_instructions, embedder=embedder_identity(embedder), lam=lam, nu=nu,
                         train_steps=train_steps, lr=lr, hidden=hidden, hidden_layers=hidden_layers,
                         embed_instruction=embed_instruction)

    def _optimize(self, ctx: RunContext) -> None:
        h = self.hparams
        pool = ctx.splits.train
        if h["n_shots"] > len(pool):
            raise ValueError(f"n_shots={h['n_shots']} exceeds the {len(pool)} training examples; raise n_train")
        rng = ctx.rng("ease-candidates")
        instr = [ctx.task.instruction]
        if h["joint"]:
            instr += h["instructions"] or generate_instructions(ctx, h["n_instructions"], stream="ease-instr")
        seen: dict[tuple, None] = {}
        idx_rows = []
        tries = 0
        while len(seen) < h["n_candidates"] and tries < 20 * h["n_candidates"]:
            tries += 1
            idx = tuple(int(i) for i in rng.choice(len(pool), h["n_shots"], replace=False))
            j = int(rng.integers(len(instr)))
            if (j, idx) not in seen:
                seen[(j, idx)] = None
                idx_rows.append((j, idx))
        embed = resolve_embedder(self.embedder)
        if h["ot_filter"] and len(idx_rows) > h["ot_keep"]:
            pool_emb = as_matrix(embed([e.input for e in pool]), len(pool))
            val_emb = as_matrix(embed([e.input for e in ctx.splits.validation]), len(ctx.splits.validation))
            d = ot_distances(np.array([r[1] for r in idx_rows]), pool_emb, val_emb)
            keep = np.argsort(d, kind="stable")[: h["ot_keep"]]
            idx_rows = [idx_rows[int(i)] for i in sorted(keep)]
            ctx.log("ot_filter", kept=len(idx_rows), distance_min=float(d.min()), distance_max=float(d.max()))
        cands = [Prompt(instr[j], tuple(pool[i] for i in idx)) for j, idx in idx_rows]
        if h["embed_instruction"] or h["joint"]:
            texts = [prompt_text(ctx.task, c) for c in cands]
        else:  # the released code embeds the exemplars only
            texts = [ctx.task.format_exemplars(c.exemplars).strip() for c in cands]
        ctx.tick(f"ease: embedding {len(cands)} candidate exemplar sets")
        feats = as_matrix(embed(texts), len(cands))
        bandit = NeuralUCB(feats.shape[1], hidden=h["hidden"], hidden_layers=h["hidden_layers"], lam=h["lam"],
                           nu=h["nu"], train_steps=h["train_steps"], lr=h["lr"], seed=ctx.seed)
        ctx.log("candidates", n=len(cands), dim=int(feats.shape[1]))
        neural_bandit_search(ctx, cands, feats, n_initial=h["n_initial"], bandit=bandit, stream="ease")


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


__all__ = ["APE", "EASE", "INSTINCT", "OPRO", "RandomSearch", "generate_instructions", "neural_bandit_search",
           "ot_distances", "prompt_key"]
