"""PAFT: prompt-agnostic fine-tuning.

Wei et al., "PAFT: Prompt-Agnostic Fine-Tuning", arXiv 2502.12859. Stage 1 builds a pool of diverse,
meaningful task prompts with an LLM and splits it into training prompts and unseen held-out prompts;
stage 2 fine-tunes with every training example rendered under a prompt sampled from the training pool, so
the model learns the task rather than one phrasing; evaluation reports accuracy across the held-out prompts
(mean, min, spread).

* :func:`build_prompt_pool` asks any :class:`lmopt.lm.LM` (the embedded SmolLM2 by default in the
  benchmark) for candidate instructions, turns each into a template with an ``{input}`` slot, rejects
  candidates that fail the quality check (:func:`default_quality_check` or your own) and near-duplicates
  (cosine similarity of their embeddings at or above ``max_similarity``), and splits the rest, seeded.
  Every rejection is kept with its reason; the pool saves to and loads from JSON.
* :class:`PromptSampler` picks the training prompt of example ``i`` in epoch ``e`` from a generator seeded
  by ``(seed, e, i // resample_every)``: seeded, different every epoch, and over an epoch it covers the pool.
* :class:`PAFTCollator` renders, tokenizes and masks a batch for ``transformers.Trainer`` or TRL's
  ``SFTTrainer`` (labels only on the answer); :class:`PAFTEpochCallback` tells it the epoch.

Behaviour of the released code (kithib/PAFT, ``data/loader.py``) and where it is kept: the released loader
keeps a random 1/24 of the training prompts and changes the prompt every ``k`` examples; here the whole
training pool is used and ``resample_every`` (default 1: every example) is ``k``. Its RACE branch formats
every example with one fixed template after sampling, so that run trained on a single prompt: not copied.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmopt.zo.directions import mix_seed

INPUT = "{input}"
# answer cues appended to an instruction that has no {input} slot of its own (varied, seeded per prompt)
FORMATS = ("{instruction}\n\nInput: {input}\nAnswer:", "{instruction}\n{input}\nThe answer is",
           "{instruction}\n\nText: {input}\nLabel:", "Text: {input}\n{instruction}\nAnswer:",
           "{instruction}\n\"{input}\"\nAnswer:")

META_PROMPT = ("Write one new instruction that asks someone to do this task: {description}. "
               "The possible answers are: {labels}. Example input: {example}\n"
               "Write only the instruction, one or two sentences, without the example and without the answer.")


@dataclass
class PromptPool:
    """Training prompts, unseen held-out prompts, and every rejected candidate with its reason."""

    train: list[str]
    held_out: list[str]
    rejected: list[dict[str, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.train:
            raise ValueError("the prompt pool has no training prompt: generate more candidates, lower the "
                             "held-out count or relax the quality check / max_similarity")
        for p in self.train + self.held_out:
            check_template(p)
        overlap = set(self.train) & set(self.held_out)
        if overlap:
            raise ValueError(f"{len(overlap)} prompts are both training and held-out prompts")

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> PromptPool:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        missing = {"train", "held_out"} - set(data)
        if missing:
            raise ValueError(f"{path} is not a saved prompt pool (missing {sorted(missing)})")
        return cls(list(data["train"]), list(data["held_out"]), list(data.get("rejected", [])),
                   dict(data.get("meta", {})))


def check_template(template: str) -> str:
    """A template must contain ``{input}`` exactly once and no other ``{...}`` field."""
    if not isinstance(template, str) or template.count(INPUT) != 1:
        raise ValueError(f"a PAFT prompt must contain {INPUT} exactly once, got {template!r}")
    others = [f for f in re.findall(r"\{[^{}]*\}", template) if f != INPUT]
    if others:
        raise ValueError(f"a PAFT prompt may contain only the {INPUT} field, {template!r} has {others}")
    return template


def render(template: str, text: str) -> str:
    return check_template(template).replace(INPUT, text)


def to_template(instruction: str, index: int, seed: int) -> str:
    """An instruction as a template: kept as is if it has ``{input}``, else given a seeded answer format."""
    instruction = instruction.strip()
    if INPUT in instruction:
        return instruction
    fmt = FORMATS[mix_seed(seed, index) % len(FORMATS)]
    return fmt.replace("{instruction}", instruction)


def clean_candidate(text: str) -> str:
    """The first paragraph of a reply, without list markers, quotes or a leading 'Instruction:'."""
    text = text.strip().split("\n\n")[0].strip()
    text = re.sub(r"^\s*(?:[-*\d.)]+\s+|instruction\s*:\s*)", "", text, flags=re.I).strip()
    return text.strip("\"'“” ").strip()


def task_keywords(task: Any) -> list[str]:
    """Words of 5+ letters of a task's instruction (what an on-task prompt mentions; the description is not
    used: it lists topics, which off-task text mentions too)."""
    text = task.instruction.lower()
    return sorted({w.rstrip("s") for w in re.findall(r"[a-z]{5,}", text)} - {"classify", "which", "their", "about"})


def default_quality_check(instruction: str, labels: Sequence[str] | None = None, examples: Sequence[str] = (),
                          keywords: Sequence[str] = ()) -> str | None:
    """The reason a candidate is not a meaningful task prompt, or None: 4–60 words, no braces other than
    ``{input}``, it must not contain an example input or end by stating an answer ("... is positive."),
    and it must be on task: mention a label or one of ``keywords`` (when any are given)."""
    words = instruction.split()
    if not 4 <= len(words) <= 60:
        return f"{len(words)} words (4 to 60 expected)"
    if re.search(r"\{(?!input\})[^{}]*\}", instruction):
        return "contains a template field other than {input}"
    low = instruction.lower()
    if any(e and e.lower()[:40] in low for e in examples):
        return "copies an example input"
    if (labels or keywords) and not any(k.lower() in low for k in list(labels or ()) + list(keywords)):
        return "off task (mentions no label and no task keyword)"
    answer = re.search(r"(?:\bis|:)\s*[\"']?([\w-]+)[\"']?[.!]?\s*$", low)
    if labels and answer and answer.group(1) in {lab.lower() for lab in labels}:
        return "states an answer (it ends in 'is <label>' or ': <label>')"
    return None


def build_prompt_pool(lm: Any, task: Any, *, n_train: int = 20, n_held_out: int = 10, max_similarity: float = 0.9,
                      embedder: Any = None, quality: Callable[[str], str | None] | None = None,
                      seed_prompts: Sequence[str] = (), max_calls: int = 200, temperature: float = 1.0,
                      seed: int = 0, role: str = "proposer") -> PromptPool:
    """Generate, filter, deduplicate and split a pool of ``n_train + n_held_out`` prompts for ``task``.

    ``embedder`` has ``encode(texts) -> unit vectors`` (default: the embedded MiniLM, :class:`lmopt.lm.Embedder`).
    ``quality(instruction) -> reason | None`` replaces :func:`default_quality_check`. ``seed_prompts`` enter
    first (as candidates like any other). At most ``max_calls`` generations; fewer accepted prompts than
    needed raise a ValueError that says how many were accepted and why the others were rejected.
    """
    from lmopt.lm import GenerationConfig

    if n_held_out < 1 or n_train < 1:
        raise ValueError(f"n_train and n_held_out must be >= 1 (got {n_train}, {n_held_out})")
    if not 0.0 < max_similarity <= 1.0:
        raise ValueError(f"max_similarity must be in (0, 1], got {max_similarity!r}")
    if embedder is None:
        from lmopt.lm import Embedder

        embedder = Embedder()
    labels = list(task.labels or ())
    inputs = [e.input for e in task.examples[:50]]
    keys = task_keywords(task)
    check = quality or (lambda s: default_quality_check(s, labels, inputs, keys))
    need = n_train + n_held_out
    kept: list[str] = []
    vectors: list[np.ndarray] = []
    rejected: list[dict[str, str]] = []
    rng = np.random.default_rng(seed)

    def consider(instruction: str) -> None:
        reason = check(instruction)
        template = None
        if reason is None:
            template = to_template(instruction, len(kept) + len(rejected), seed)
            try:
                check_template(template)
            except ValueError as exc:
                reason = str(exc)
        if reason is None:
            vec = np.asarray(embedder.encode([instruction]), dtype=np.float64)[0]
            sims = [float(vec @ v) for v in vectors]
            if sims and max(sims) >= max_similarity:
                reason = f"near-duplicate (cosine {max(sims):.3f} >= {max_similarity})"
            else:
                kept.append(template)
                vectors.append(vec)
                return
        rejected.append({"prompt": instruction, "reason": reason})

    for p in seed_prompts:
        consider(clean_candidate(p))
    calls = 0
    while len(kept) < need and calls < max_calls:
        example = inputs[int(rng.integers(len(inputs)))] if inputs else ""
        meta = META_PROMPT.format(description=task.description or task.instruction,
                                  labels=", ".join(labels) or "free text", example=example[:200])
        out = lm.chat([{"role": "user", "content": meta}],
                      GenerationConfig(max_new_tokens=80, temperature=temperature, seed=int(rng.integers(1 << 31))),
                      role=role)
        calls += 1
        consider(clean_candidate(out[0][0].text))
    if len(kept) < need:
        reasons: dict[str, int] = {}
        for r in rejected:
            key = r["reason"].split(" (")[0]
            reasons[key] = reasons.get(key, 0) + 1
        raise ValueError(f"only {len(kept)} prompts passed the checks after {calls} generations, {need} are needed "
                         f"({n_train} training + {n_held_out} held-out); rejections: {reasons}. Raise max_calls, "
                         "lower n_train/n_held_out, or relax max_similarity / the quality check")
    order = np.random.default_rng(mix_seed(seed, 7)).permutation(len(kept))
    held = [kept[i] for i in order[:n_held_out]]
    train = [kept[i] for i in order[n_held_out:need]]
    return PromptPool(train, held, rejected, {"calls": calls, "max_similarity": max_similarity, "seed": seed})


class PromptSampler:
    """The training prompt of example ``index`` in ``epoch`` (seeded; see the module doc)."""

    def __init__(self, prompts: Sequence[str], seed: int = 0, resample_every: int = 1) -> None:
        if not prompts:
            raise ValueError("PromptSampler needs at least one training prompt (the pool is empty)")
        if resample_every < 1:
            raise ValueError(f"resample_every must be >= 1, got {resample_every!r}")
        self.prompts = [check_template(p) for p in prompts]
        self.seed = seed
        self.resample_every = resample_every

    def index(self, epoch: int, index: int) -> int:
        block = index // self.resample_every
        n = len(self.prompts)
        # a fresh permutation of the pool per run of n blocks: every prompt once per n blocks
        perm = np.random.default_rng(mix_seed(self.seed, epoch, block // n)).permutation(n)
        return int(perm[block % n])

    def template(self, epoch: int, index: int) -> str:
        return self.prompts[self.index(epoch, index)]


class PAFTCollator:
    """Render each feature ``{"input", "target", "index"}`` with its sampled prompt, tokenize, mask the prompt.

    Labels are ``-100`` on the prompt and padding, the target tokens (plus EOS) elsewhere. Set ``epoch``
    (or use :class:`PAFTEpochCallback`) so prompts are resampled every epoch.
    """

    def __init__(self, tokenizer: Any, sampler: PromptSampler, max_length: int = 256) -> None:
        self.tokenizer = tokenizer
        self.sampler = sampler
        self.max_length = max_length
        self.epoch = 0

    def texts(self, features: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
        out = []
        for f in features:
            for key in ("input", "target", "index"):
                if key not in f:
                    raise ValueError(f"a PAFT feature needs 'input', 'target' and 'index'; got keys {sorted(f)}")
            out.append((render(self.sampler.template(self.epoch, int(f["index"])), str(f["input"])),
                        " " + str(f["target"]).strip()))
        return out

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        rows, labels = [], []
        for prompt, answer in self.texts(features):
            p = tok.encode(prompt, add_special_tokens=False)
            eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
            a = tok.encode(answer, add_special_tokens=False) + eos
            ids = (p + a)[-self.max_length:]
            lab = ([-100] * len(p) + a)[-self.max_length:]
            rows.append(ids)
            labels.append(lab)
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        lab_t = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, (r, lab) in enumerate(zip(rows, labels)):
            input_ids[i, :len(r)] = torch.tensor(r)
            attn[i, :len(r)] = 1
            lab_t[i, :len(lab)] = torch.tensor(lab)
        return {"input_ids": input_ids, "attention_mask": attn, "labels": lab_t}


def make_epoch_callback(collator: PAFTCollator) -> Any:
    """A ``transformers.TrainerCallback`` that sets the collator's epoch at the start of every epoch."""
    from transformers import TrainerCallback

    class PAFTEpochCallback(TrainerCallback):
        def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            collator.epoch = int(state.epoch or 0)

    return PAFTEpochCallback()


def spread(scores: Sequence[float]) -> dict[str, float]:
    """Mean, min, max and standard deviation of per-prompt accuracies (PAFT's robustness summary)."""
    arr = np.asarray(list(scores), dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no per-prompt score to summarise")
    return {"mean": float(arr.mean()), "min": float(arr.min()), "max": float(arr.max()),
            "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0, "n_prompts": int(arr.size)}
