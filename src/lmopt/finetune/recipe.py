"""``kind: finetune_paft`` and ``kind: finetune_flexora`` recipes for ``lmopt run``.

Both fine-tune a causal LM with LoRA (peft) on a classification task of :mod:`lmopt.data` and score it
by its label choice (the label whose first token has the highest next-token logit after the prompt).
Every finished (condition, seed) run is written to ``checkpoint.json``; rerunning the recipe skips them, and
since a run is deterministic given its seed, a run killed and resumed gives the same results.

.. code-block:: yaml

    name: paft-tweets
    kind: finetune_paft          # PAFT vs one-prompt SFT vs the base model, on unseen prompts
    task: {name: tweets, per_class: 16, n_test: 60}
    prompts:                     # a saved pool, inline prompts, or generate: {n_train, n_held_out}
      train: ["Classify the sentiment of this tweet.\\nTweet: {input}\\nSentiment:", ...]
      held_out: ["Text: {input}\\nWhat mood does the text express?\\nAnswer:", ...]
    lora: {r: 8, alpha: 16, target_modules: [q_proj, v_proj], layers: [26, 27, 28, 29]}
    train: {epochs: 2, batch: 4, lr: 1.0e-3}
    seeds: [0, 1, 2]

``finetune_flexora`` has ``search: {steps, alpha_lr, val_batches}`` and compares LoRA retrained on the
Flexora-selected layers with LoRA on all candidate layers and on as many random layers.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator

from lmopt._io import read_json, write_json_atomic, write_text_atomic
from lmopt._report import label_bars, save_figure
from lmopt.recipe import RecipeError, _pretty, _Strict, unique


class TaskSpec(_Strict):
    name: str = "tweets"
    per_class: int | None = Field(16, ge=1)
    n_val: int = Field(8, ge=1)
    n_test: int = Field(60, ge=1)
    split_seed: int = 0


class LoraSpec(_Strict):
    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)
    layers: list[int] | None = None


class TrainSpec(_Strict):
    epochs: int = Field(1, ge=1)
    batch: int = Field(4, ge=1)
    lr: float = Field(1e-3, gt=0)
    max_length: int = Field(128, ge=16)


class GenerateSpec(_Strict):
    n_train: int = Field(10, ge=1)
    n_held_out: int = Field(10, ge=1)
    max_calls: int = Field(200, ge=1)
    max_similarity: float = Field(0.9, gt=0, le=1)


class PromptsSpec(_Strict):
    pool: str | None = None
    train: list[str] | None = None
    held_out: list[str] | None = None
    generate: GenerateSpec | None = None

    @model_validator(mode="after")
    def _one_source(self) -> PromptsSpec:
        sources = [self.pool is not None, self.train is not None or self.held_out is not None,
                   self.generate is not None]
        if sum(sources) != 1:
            raise ValueError("give exactly one of: pool (a saved pool's path), train + held_out, or generate")
        if (self.train is None) != (self.held_out is None):
            raise ValueError("inline prompts need both train and held_out")
        return self


class _FinetuneBase(_Strict):
    name: str
    model: str | None = Field(None, description="HF id / folder; null = the embedded SmolLM2-135M-Instruct")
    task: TaskSpec = Field(default_factory=TaskSpec)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)

    @model_validator(mode="after")
    def _distinct_seeds(self) -> _FinetuneBase:
        unique(self.seeds, self.seeds, "seeds must be distinct")
        return self


class PAFTRecipe(_FinetuneBase):
    kind: Literal["finetune_paft"]
    prompts: PromptsSpec
    sft_prompt: int = Field(0, ge=0, description="index of the training prompt one-prompt SFT uses")


class SearchSpec(_Strict):
    steps: int = Field(20, ge=1)
    alpha_lr: float = Field(0.01, gt=0)
    val_batches: int = Field(8, ge=1)


class FlexoraRecipe(_FinetuneBase):
    kind: Literal["finetune_flexora"]
    search: SearchSpec = Field(default_factory=SearchSpec)


def _validate(cls: type, cfg: dict[str, Any], source: str) -> Any:
    try:
        return cls.model_validate(cfg)
    except ValidationError as exc:
        raise RecipeError(f"{source} is invalid:\n{_pretty(exc)}") from None


def validate_paft_recipe(cfg: dict[str, Any], source: str = "recipe") -> PAFTRecipe:
    return _validate(PAFTRecipe, cfg, source)


def validate_flexora_recipe(cfg: dict[str, Any], source: str = "recipe") -> FlexoraRecipe:
    return _validate(FlexoraRecipe, cfg, source)


# ------------------------------------------------------------------ shared pieces
class _Setup:
    """The model, tokenizer, task splits and label token ids of a recipe."""

    def __init__(self, r: _FinetuneBase) -> None:
        from lmopt.data import load_task

        self.r = r
        self.task = load_task(r.task.name, **({"per_class": r.task.per_class} if r.task.per_class else {}))
        if not self.task.labels:
            raise RecipeError(f"task {r.task.name!r} has no label set; finetune recipes score classification tasks")
        n_train = len(self.task.examples) - r.task.n_val - r.task.n_test
        if n_train < 1:
            raise RecipeError(f"task {r.task.name!r} has {len(self.task.examples)} examples: too few for "
                              f"n_val={r.task.n_val} + n_test={r.task.n_test}; raise per_class or lower them")
        self.splits = self.task.split(seed=r.task.split_seed, n_train=n_train, n_val=r.task.n_val,
                                      n_test=r.task.n_test)
        self.model, self.tok = self._load()
        ids = [self.tok.encode(" " + lab, add_special_tokens=False)[0] for lab in self.task.labels]
        if len(set(ids)) != len(ids):
            raise RecipeError(f"the labels {self.task.labels} share a first token; label scoring needs distinct ones")
        self.label_ids = ids

    def _load(self) -> tuple[Any, Any]:
        if self.r.model is None:
            from lmopt.assets import load_causal_lm

            return load_causal_lm()
        from lmopt._deps import require

        tr = require("transformers", "hf")
        return tr.AutoModelForCausalLM.from_pretrained(self.r.model), tr.AutoTokenizer.from_pretrained(self.r.model)

    def fresh_lora(self, seed: int, layers: list[int] | None) -> Any:
        import torch

        from lmopt._deps import require

        peft = require("peft", "peft")
        base, _ = self._load()
        spec = self.r.lora
        cfg = peft.LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=0.0,
                              target_modules=list(spec.target_modules), layers_to_transform=layers,
                              layers_pattern="layers" if layers is not None else None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                return peft.get_peft_model(base, cfg), cfg
            except ValueError as exc:
                raise RecipeError(f"LoRA cannot be added with target_modules={spec.target_modules} "
                                  f"layers={layers}: {exc}") from None

    def features(self, examples: list[Any]) -> list[dict[str, Any]]:
        return [{"input": e.input, "target": e.target, "index": i} for i, e in enumerate(examples)]

    def accuracy(self, model: Any, template: str, examples: list[Any], batch: int = 8) -> float:
        """Label choice by the first label token's logit after the rendered prompt."""
        import torch

        from .paft import render

        model.eval()
        tok = self.tok
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        correct = 0
        with torch.no_grad():
            for i in range(0, len(examples), batch):
                part = examples[i:i + batch]
                rows = [tok.encode(render(template, e.input), add_special_tokens=False)[-self.r.train.max_length:]
                        for e in part]
                width = max(len(x) for x in rows)
                ids = torch.full((len(rows), width), pad, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for k, x in enumerate(rows):
                    ids[k, :len(x)], mask[k, :len(x)] = torch.tensor(x), 1
                logits = model(input_ids=ids, attention_mask=mask).logits
                last = torch.tensor([len(x) - 1 for x in rows])
                scores = logits[torch.arange(len(rows)), last][:, self.label_ids]
                pred = scores.argmax(-1).tolist()
                correct += sum(self.task.labels[p] == e.target for p, e in zip(pred, part))
        return correct / len(examples)

    def task_template(self) -> str:
        t = self.task.template.replace("{exemplars}", "").replace("{instruction}", self.task.instruction)
        return t


def _train(setup: _Setup, model: Any, sampler: Any, seed: int, gates: Any = None, search: SearchSpec | None = None
           ) -> dict[str, Any]:
    """AdamW on the LoRA parameters; with ``gates``, Flexora's hyper step after every weight step."""
    import torch

    from .flexora import _cycle, hyper_step
    from .paft import PAFTCollator

    r = setup.r
    coll = PAFTCollator(setup.tok, sampler, max_length=r.train.max_length)
    feats = setup.features(setup.splits.train)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=r.train.lr, weight_decay=0.0)
    alpha_opt = torch.optim.Adam([gates.alpha], lr=search.alpha_lr) if gates is not None else None
    vals = None
    if gates is not None:
        vfeats = setup.features(setup.splits.validation)
        vals = _cycle([coll(vfeats[i:i + r.train.batch]) for i in range(0, len(vfeats), r.train.batch)])
    rng = np.random.default_rng(seed)
    losses, alpha_hist = [], []
    steps, t0 = 0, time.perf_counter()
    epochs = r.train.epochs
    max_steps = search.steps if search is not None else None
    for epoch in range(epochs if max_steps is None else 10 ** 6):
        coll.epoch = epoch
        order = rng.permutation(len(feats))
        for i in range(0, len(order), r.train.batch):
            model.train()
            batch = coll([feats[j] for j in order[i:i + r.train.batch]])
            opt.zero_grad(set_to_none=True)
            loss = model(**batch).loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss at step {steps}; lower train.lr")
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            steps += 1
            if gates is not None:
                model.eval()
                hyper_step(gates, alpha_opt, lambda b: model(**b).loss, vals, search.val_batches)
                alpha_hist.append(gates.alpha.detach().tolist())
            if max_steps is not None and steps >= max_steps:
                break
        if max_steps is not None and steps >= max_steps:
            break
    return {"losses": losses, "steps": steps, "seconds": time.perf_counter() - t0, "alpha_history": alpha_hist}


def _run_all(keys: list[str], run_dir: Path, fn: Any, progress: Any) -> dict[str, Any]:
    ckpt = run_dir / "checkpoint.json"
    done: dict[str, Any] = read_json(ckpt, {}).get("runs", {})
    bar = progress.add_task("fine-tuning", total=len(keys)) if progress is not None else None
    for key in keys:
        if progress is not None:
            progress.update(bar, description=key)
        if key not in done:
            done[key] = fn(key)
            write_json_atomic(ckpt, {"runs": done})
        if progress is not None:
            progress.advance(bar)
    return done


# ------------------------------------------------------------------ PAFT
def _pool(r: PAFTRecipe, run_dir: Path, setup: _Setup) -> Any:
    from .paft import PromptPool, build_prompt_pool

    saved = run_dir / "prompt_pool.json"
    if saved.exists():
        return PromptPool.load(saved)
    p = r.prompts
    try:
        if p.pool is not None:
            pool = PromptPool.load(p.pool)
        elif p.train is not None:
            pool = PromptPool(list(p.train), list(p.held_out or []))
        else:
            from lmopt.lm import LM, LocalLM

            g = p.generate
            pool = build_prompt_pool(LM(LocalLM(r.model) if r.model else LocalLM()), setup.task, n_train=g.n_train,
                                     n_held_out=g.n_held_out, max_calls=g.max_calls, max_similarity=g.max_similarity)
    except (ValueError, OSError) as exc:
        raise RecipeError(f"prompts: {exc}") from None
    if not pool.held_out:
        raise RecipeError("prompts: the pool has no held-out prompt; PAFT is evaluated on unseen prompts")
    if r.sft_prompt >= len(pool.train):
        raise RecipeError(f"sft_prompt={r.sft_prompt} but the pool has {len(pool.train)} training prompts")
    pool.save(saved)
    return pool


def run_paft_recipe(cfg: dict[str, Any], run_dir: Path, progress: Any = None) -> dict[str, Any]:
    from .paft import PromptSampler, spread

    r = validate_paft_recipe(cfg)
    setup = _Setup(r)
    pool = _pool(r, run_dir, setup)
    test = setup.splits.test

    def one(key: str) -> dict[str, Any]:
        cond, seed = key.split("/")
        if cond == "base":
            model, info = setup.model, {"steps": 0, "seconds": 0.0, "losses": []}
        else:
            model, _ = setup.fresh_lora(int(seed), r.lora.layers)
            prompts = pool.train if cond == "paft" else [pool.train[r.sft_prompt]]
            info = _train(setup, model, PromptSampler(prompts, seed=int(seed)), int(seed))
        acc = [setup.accuracy(model, t, test) for t in pool.held_out]
        seen = [setup.accuracy(model, t, test) for t in pool.train]
        return {"held_out": acc, "train_prompts": seen, "steps": info["steps"], "seconds": info["seconds"],
                "final_loss": info["losses"][-1] if info["losses"] else None}

    keys = ["base/0"] + [f"{c}/{s}" for c in ("sft", "paft") for s in r.seeds]
    done = _run_all(keys, run_dir, one, progress)
    rows = {}
    for cond in ("base", "sft", "paft"):
        runs = [v for k, v in done.items() if k.split("/")[0] == cond]
        rows[cond] = {"held_out": spread([a for run in runs for a in run["held_out"]]),
                      "train_prompts": spread([a for run in runs for a in run["train_prompts"]]),
                      "per_seed_mean": [statistics.fmean(run["held_out"]) for run in runs],
                      "per_prompt": [run["held_out"] for run in runs]}
    results = {"kind": "finetune_paft", "name": r.name, "rows": rows, "n_test": len(test),
               "n_train_examples": len(setup.splits.train), "pool": {"train": len(pool.train),
                                                                      "held_out": len(pool.held_out)},
               "seeds": r.seeds, "lora": r.lora.model_dump(), "train": r.train.model_dump()}
    _write_paft_report(cfg, results, run_dir)
    return results


def plot_paft_results(results: dict[str, Any], run_dir: Path) -> list[Path]:
    """``prompt_accuracy.png``: accuracy on each held-out prompt (all seeds), one box per condition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    names = ["base", "sft", "paft"]
    data = [[a for run in results["rows"][n]["per_prompt"] for a in run] for n in names]
    ax.boxplot(data, tick_labels=["base model", "SFT, one prompt", "PAFT"])
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"test accuracy on a held-out prompt (n={results['n_test']})")
    ax.set_title(f"{results['pool']['held_out']} unseen prompts x {len(results['seeds'])} seeds", fontsize=9)
    return [save_figure(fig, Path(run_dir) / "prompt_accuracy.png")]


def _write_paft_report(cfg: dict[str, Any], results: dict[str, Any], run_dir: Path) -> None:
    lines = [f"# {cfg['name']}", "",
             f"PAFT against one-prompt SFT and the base model: LoRA r={results['lora']['r']} on "
             f"{results['lora']['target_modules']}, {results['n_train_examples']} training examples, "
             f"{results['train']['epochs']} epoch(s); accuracy on {results['n_test']} test examples under each of "
             f"{results['pool']['held_out']} held-out prompts never used in training (seeds {results['seeds']}).",
             "", "| condition | held-out prompts: mean | min | max | std | training prompts: mean |",
             "|---|---|---|---|---|---|"]
    for name, row in results["rows"].items():
        h, t = row["held_out"], row["train_prompts"]
        lines.append(f"| {name} | {h['mean']:.3f} | {h['min']:.3f} | {h['max']:.3f} | {h['std']:.3f} "
                     f"| {t['mean']:.3f} |")
    p, s = results["rows"]["paft"]["held_out"], results["rows"]["sft"]["held_out"]
    verdict = "higher" if p["mean"] > s["mean"] else "not higher"
    lines += ["", f"PAFT's mean accuracy on unseen prompts is {verdict} than one-prompt SFT's ({p['mean']:.3f} vs "
              f"{s['mean']:.3f}); its worst prompt {p['min']:.3f} vs {s['min']:.3f}.", "",
              "![accuracy across prompts](prompt_accuracy.png)", ""]
    write_text_atomic(run_dir / "report.md", "\n".join(lines))


# ------------------------------------------------------------------ Flexora
def run_flexora_recipe(cfg: dict[str, Any], run_dir: Path, progress: Any = None) -> dict[str, Any]:
    from .flexora import FlexoraGates, trained_parameters
    from .paft import PromptSampler

    r = validate_flexora_recipe(cfg)
    setup = _Setup(r)
    template = setup.task_template()
    sampler_of = lambda seed: PromptSampler([template], seed=seed)  # noqa: E731
    test = setup.splits.test

    def one(key: str) -> dict[str, Any]:
        cond, seed_s = key.split("/")
        seed = int(seed_s)
        if cond == "search":
            model, _ = setup.fresh_lora(seed, r.lora.layers)
            gates = FlexoraGates(model)
            info = _train(setup, model, sampler_of(seed), seed, gates=gates, search=r.search)
            return {"layers": gates.layers, "alpha": gates.alpha.detach().tolist(),
                    "selected": gates.selected_layers(), "alpha_history": info["alpha_history"],
                    "seconds": info["seconds"]}
        search = done_search[seed]
        if cond == "flexora":
            layers = search["selected"]
        elif cond == "all":
            layers = search["layers"]
        else:
            rng = np.random.default_rng(seed + 7919)
            layers = sorted(rng.choice(search["layers"], size=len(search["selected"]), replace=False).tolist())
        if not layers:
            return {"layers": [], "accuracy": None, "trained_params": 0, "seconds": 0.0, "skipped": "no layer"}
        model, _ = setup.fresh_lora(seed, layers)
        info = _train(setup, model, sampler_of(seed), seed)
        return {"layers": layers, "accuracy": setup.accuracy(model, template, test),
                "trained_params": trained_parameters(model), "seconds": info["seconds"]}

    searches = _run_all([f"search/{s}" for s in r.seeds], run_dir, one, progress)
    done_search = {int(k.split("/")[1]): v for k, v in searches.items()}
    keys = [f"search/{s}" for s in r.seeds] + [f"{c}/{s}" for c in ("flexora", "all", "random") for s in r.seeds]
    done = _run_all(keys, run_dir, one, progress)
    base_acc = setup.accuracy(setup.model, template, test)
    rows = {}
    for cond in ("flexora", "all", "random"):
        runs = [done[f"{cond}/{s}"] for s in r.seeds]
        accs = [x["accuracy"] for x in runs if x["accuracy"] is not None]
        rows[cond] = {"accuracy": accs, "median": statistics.median(accs) if accs else None,
                      "trained_params": [x["trained_params"] for x in runs], "layers": [x["layers"] for x in runs],
                      "seconds": [x["seconds"] for x in runs]}
    results = {"kind": "finetune_flexora", "name": r.name, "rows": rows, "base_accuracy": base_acc,
               "searches": {str(s): done_search[s] for s in r.seeds}, "n_test": len(test), "seeds": r.seeds,
               "lora": r.lora.model_dump(), "search": r.search.model_dump()}
    _write_flexora_report(cfg, results, run_dir)
    return results


def plot_flexora_results(results: dict[str, Any], run_dir: Path) -> list[Path]:
    """``alpha.png``: the final α per candidate layer of each seed's search (bars; α > 0 is selected)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    searches = results["searches"]
    n = len(searches)
    for k, (seed, s) in enumerate(sorted(searches.items())):
        xs = [i + (k - (n - 1) / 2) * 0.8 / n for i in range(len(s["layers"]))]
        ax.bar(xs, s["alpha"], width=0.8 / n, label=f"seed {seed}")
        label_bars(ax, xs, s["alpha"], "{:+.3f}")
    first = next(iter(searches.values()))
    ax.set_xticks(range(len(first["layers"])), [str(layer) for layer in first["layers"]])
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("α after the search (selected if > 0)")
    ax.legend(fontsize=8)
    return [save_figure(fig, Path(run_dir) / "alpha.png")]


def _write_flexora_report(cfg: dict[str, Any], results: dict[str, Any], run_dir: Path) -> None:
    lines = [f"# {cfg['name']}", "",
             f"Flexora: {results['search']['steps']} search steps (α by Adam, lr {results['search']['alpha_lr']}, "
             f"{results['search']['val_batches']} validation batches per step), then LoRA retrained on the layers "
             f"with α > 0, against LoRA on all candidate layers and on as many random layers; accuracy on "
             f"{results['n_test']} test examples; base model {results['base_accuracy']:.3f}.", ""]
    for seed, s in sorted(results["searches"].items()):
        alphas = ", ".join(f"{layer}: {a:+.3f}" for layer, a in zip(s["layers"], s["alpha"]))
        lines.append(f"- seed {seed}: selected {s['selected'] or 'none'} (α per layer {alphas})")
    lines += ["", "| LoRA on | accuracy per seed | median | trained parameters | training s |", "|---|---|---|---|---|"]
    for cond, row in results["rows"].items():
        med = "n/a" if row["median"] is None else f"{row['median']:.3f}"
        lines.append(f"| {cond} | {', '.join(f'{a:.3f}' for a in row['accuracy']) or 'n/a'} | {med} | "
                     f"{', '.join(str(p) for p in row['trained_params'])} | "
                     f"{', '.join(f'{s:.1f}' for s in row['seconds'])} |")
    lines += ["", "![alpha per layer](alpha.png)", ""]
    write_text_atomic(run_dir / "report.md", "\n".join(lines))
