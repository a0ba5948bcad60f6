"""ZO fine-tuning of the embedded SmolLM2-135M-Instruct on the embedded tweets sentiment task.

    python -m benchmarks.zo_finetune [--quick] [--out DIR] [--seeds N]

Prompt-based classification (MeZO's setting, arXiv 2305.17333 Sec. 3): the prompt is the task's template
("... Tweet: {text}\\nSentiment:") and the prediction is the label word (" negative" / " neutral" /
" positive", one token each) with the highest next-token logit; the training loss is cross-entropy over
those three logits. Train: 16 examples per class (48); fixed validation (30) and test (90) sets
(stratified split, seed 0). Compared on the same data, side by side: zero-shot, ZO-SGD (MeZO), R-AdaZO
and ZoAR, and first-order AdamW given the same wall time as the ZO-SGD run of that seed.

Reduced to fit a 2-core CPU (stated in the results): ZO perturbs only the tensors named by ``--train``
(default: the top layer's MLP down-projection and the final norm; PEFT-style restriction to named tensors);
the frozen bottom of the network is run once per example and its hidden states are cached, and the top
layer is evaluated at the last position only (the cached path is checked against the full model's logits
before training). Minibatch 8, 3000 ZO steps per reported run; learning rates are chosen from ``LR_GRIDS``
by validation loss on a tuning seed that is not reported (an optimum at a grid edge is flagged).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from benchmarks._common import grid_choice, median_spread, parse_args, save_plot, tuning_and_report_seeds, write_result

LABEL_WORDS = (" negative", " neutral", " positive")


def _extra(p: Any) -> None:
    p.add_argument("--layers", type=int, default=1, help="top decoder layers trained (default 1)")
    p.add_argument("--train", default="layers.0.mlp.down_proj.weight,norm.weight",
                   help="comma-separated names of the trained tensors in the top slice (ZO perturbs only these)")
    p.add_argument("--directions", default="gaussian", help="ZO direction kind (lmopt.zo; default MeZO's Gaussian)")
    p.add_argument("--steps", type=int, default=None, help="ZO steps per reported run (default 3000, quick 30)")
    p.add_argument("--tune-steps", type=int, default=None, help="ZO steps per tuning run (default 1000, quick 10)")
    p.add_argument("--evals", type=int, default=10, help="evaluations along each reported run")
    p.add_argument("--batch", type=int, default=8, help="training examples per step")
    p.add_argument("--per-class", type=int, default=16)
    p.add_argument("--mu", type=float, default=1e-3)


class CachedTop(torch.nn.Module):
    """The top ``k`` decoder layers + final norm of a Llama model, run on cached hidden states.

    ``forward(h, last)`` returns the label-word logits at position ``last`` of each row (right padding,
    causal attention: real tokens never attend to the padding that follows them). Only the last
    position's output is needed, so the top layer computes keys and values for every position but its
    query, attention output and MLP for that one position: the same logits at a fraction of the cost
    (checked against the full model in ``main``).
    """

    def __init__(self, model: Any, k: int, label_ids: list[int]) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(model.model.layers[-k:])
        self.norm = model.model.norm
        self.rotary = model.model.rotary_emb
        self.register_buffer("label_w", model.lm_head.weight[label_ids].detach().clone(), persistent=False)

    def forward(self, h: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
        cos, sin = self.rotary(h, position_ids=pos)
        for layer in self.layers[:-1]:
            out = layer(h, attention_mask=None, position_embeddings=(cos, sin), position_ids=pos)
            h = out[0] if isinstance(out, tuple) else out
        h_last = _last_position_layer(self.layers[-1], h, last, cos, sin)
        return self.norm(h_last) @ self.label_w.T


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _last_position_layer(layer: Any, h: torch.Tensor, last: torch.Tensor, cos: torch.Tensor,
                         sin: torch.Tensor) -> torch.Tensor:
    """One Llama decoder layer's output at position ``last[b]`` of each row ``b`` (pre-norm, rotary, GQA)."""
    attn = layer.self_attn
    b, t, _ = h.shape
    rows = torch.arange(b, device=h.device)
    x = layer.input_layernorm(h)
    d = attn.head_dim
    keys = attn.k_proj(x).view(b, t, -1, d).transpose(1, 2)  # (b, kv_heads, t, d)
    values = attn.v_proj(x).view(b, t, -1, d).transpose(1, 2)
    keys = _rotate(keys, cos.unsqueeze(1), sin.unsqueeze(1))
    query = attn.q_proj(x[rows, last]).view(b, -1, 1, d)  # (b, heads, 1, d)
    query = _rotate(query, cos[0, last].view(b, 1, 1, d), sin[0, last].view(b, 1, 1, d))
    groups = attn.num_key_value_groups
    keys = keys.repeat_interleave(groups, dim=1)
    values = values.repeat_interleave(groups, dim=1)
    visible = (torch.arange(t, device=h.device).unsqueeze(0) <= last.unsqueeze(1)).view(b, 1, 1, t)
    scores = (query @ keys.transpose(-1, -2)) * attn.scaling
    weights = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    mixed = (weights @ values).reshape(b, -1)
    y = h[rows, last] + attn.o_proj(mixed)
    return y + layer.mlp(layer.post_attention_layernorm(y))


def encode(tok: Any, task: Any, examples: list[Any]) -> tuple[list[list[int]], torch.Tensor]:
    prompts = [task.template.format(instruction=task.instruction, exemplars="", input=e.input) for e in examples]
    ids = [tok.encode(p, add_special_tokens=False)[-96:] for p in prompts]
    labels = torch.tensor([task.labels.index(e.target) for e in examples])
    return ids, labels


@torch.no_grad()
def cache_hidden(model: Any, ids: list[list[int]], k: int, pad: int, bs: int = 16) -> tuple[list, torch.Tensor]:
    """Hidden states entering the top ``k`` layers (one padded tensor per batch) and each row's last index."""
    chunks, lasts = [], []
    n_layers = len(model.model.layers)
    for i in range(0, len(ids), bs):
        part = ids[i:i + bs]
        width = max(len(x) for x in part)
        t = torch.full((len(part), width), pad, dtype=torch.long)
        for r, x in enumerate(part):
            t[r, :len(x)] = torch.tensor(x)
        out = model.model(input_ids=t, output_hidden_states=True)
        chunks.append(out.hidden_states[n_layers - k].float().clone())
        lasts.append(torch.tensor([len(x) - 1 for x in part]))
    return chunks, torch.cat(lasts)


def gather_rows(chunks: list[torch.Tensor], lasts: torch.Tensor, rows: torch.Tensor, bs: int = 16):
    """A padded batch of cached rows (global indices) and their last positions."""
    sizes = [c.shape[0] for c in chunks]
    starts = torch.tensor([0] + sizes).cumsum(0)
    hs = []
    for r in rows.tolist():
        ci = int(torch.searchsorted(starts, torch.tensor(r), right=True)) - 1
        hs.append(chunks[ci][r - int(starts[ci])])
    width = max(h.shape[0] for h in hs)
    h = torch.stack([torch.nn.functional.pad(x, (0, 0, 0, width - x.shape[0])) for x in hs])
    return h, lasts[rows]


def evaluate_split(top: CachedTop, cache: tuple[list, torch.Tensor], labels: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy over the label words) of ``top`` on one cached split."""
    chunks, lasts = cache
    correct, loss = 0, 0.0
    with torch.no_grad():
        off = 0
        for c in chunks:
            n = c.shape[0]
            logits = top(c, lasts[off:off + n])
            y = labels[off:off + n]
            correct += int((logits.argmax(-1) == y).sum())
            loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            off += n
    return correct / len(labels), loss / len(labels)


ZO_METHODS = ("zo-sgd", "r-adazo", "zoar")
# learning-rate grids (x3 apart); each is centred on a one-seed exploration and flagged when its best is an edge
LR_GRIDS = {"zo-sgd": (1e-4, 3e-4, 1e-3, 3e-3), "r-adazo": (3e-5, 1e-4, 3e-4, 1e-3),
            "zoar": (1e-4, 3e-4, 1e-3, 3e-3), "adamw": (3e-5, 1e-4, 3e-4, 1e-3)}


class Bench:
    """The cached data, the trainable slice and one training run of each kind."""

    def __init__(self, args: Any, k: int, per_class: int, n_val: int, n_test: int) -> None:
        from lmopt.assets import load_causal_lm
        from lmopt.data import load_task

        self.args = args
        t_load = time.perf_counter()
        model, tok = load_causal_lm()
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        task = load_task("tweets")
        splits = task.split(seed=0, n_train=3 * per_class, n_val=n_val, n_test=n_test)
        label_ids = [tok.encode(w, add_special_tokens=False)[0] for w in LABEL_WORDS]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.data = {}
        for name, exs in (("train", splits.train), ("validation", splits.validation), ("test", splits.test)):
            ids, labels = encode(tok, task, exs)
            self.data[name] = (cache_hidden(model, ids, k, pad), labels, ids)
        self.load_seconds = time.perf_counter() - t_load
        self.top = CachedTop(model, k, label_ids)
        names = [n.strip() for n in args.train.split(",") if n.strip()]
        params = dict(self.top.named_parameters())
        unknown = [n for n in names if n not in params]
        if unknown or not names:
            raise SystemExit(f"--train names no parameter of the top slice: {unknown or names}; "
                             f"choose from {sorted(params)}")
        self.trained = [params[n] for n in names]
        self.trained_names = names
        self.initial = [p.detach().clone() for p in self.trained]
        self.max_dev = self._check_cached_path(model, label_ids)

    def _check_cached_path(self, model: Any, label_ids: list[int]) -> float:
        """The cached, last-position path must reproduce the full model's label logits."""
        with torch.no_grad():
            ids = self.data["test"][2][:6]
            full = torch.stack([model(input_ids=torch.tensor([x])).logits[0, -1, label_ids] for x in ids])
            chunks, lasts = self.data["test"][0]
            max_dev = float((full - self.top(chunks[0][:6], lasts[:6])).abs().max())
        if max_dev > 1e-3:
            raise RuntimeError(f"cached top-layer path deviates from the full model by {max_dev}")
        return max_dev

    def reset(self) -> None:
        with torch.no_grad():
            for p, p0 in zip(self.trained, self.initial):
                p.copy_(p0)

    def batch_loss(self, rows: torch.Tensor) -> torch.Tensor:
        cache, labels, _ = self.data["train"]
        h, last = gather_rows(cache[0], cache[1], rows)
        return torch.nn.functional.cross_entropy(self.top(h, last), labels[rows])

    def evaluate(self, splits: tuple[str, ...] = ("validation", "test")) -> dict[str, float]:
        out = {}
        for name in splits:
            acc, loss = evaluate_split(self.top, self.data[name][0], self.data[name][1])
            out[name], out[f"{name}_loss"] = acc, loss
        return out

    def run_zo(self, method: str, lr: float, seed: int, steps: int, n_evals: int,
               splits: tuple[str, ...] = ("validation", "test")) -> dict[str, Any]:
        from lmopt.zo import OPTIMIZERS

        self.reset()
        kwargs: dict[str, Any] = {"lr": lr, "mu": self.args.mu, "seed": seed, "directions": self.args.directions}
        if method == "zoar":
            kwargs.update(q=2, history=4)
        opt = OPTIMIZERS[method](self.trained, **kwargs)
        gen = torch.Generator().manual_seed(seed)
        n_train = len(self.data["train"][1])
        every = max(1, steps // n_evals)
        curve = [{"step": 0, "seconds": 0.0, "queries": 0, **self.evaluate(splits)}]
        losses: list[float] = []
        elapsed, t0 = 0.0, time.perf_counter()
        for step in range(1, steps + 1):
            rows = torch.randperm(n_train, generator=gen)[:self.args.batch]
            losses.append(float(opt.step(lambda rows=rows: self.batch_loss(rows))))
            if step % every == 0 or step == steps:
                elapsed += time.perf_counter() - t0  # evaluation time is not training time
                curve.append({"step": step, "seconds": elapsed, "queries": opt.total_queries,
                              "train_loss": sum(losses[-every:]) / len(losses[-every:]), **self.evaluate(splits)})
                t0 = time.perf_counter()
        return {"seed": seed, "lr": lr, "curve": curve, "final": curve[-1], "seconds": elapsed}

    def run_adamw(self, lr: float, seed: int, n_evals: int, *, seconds: float | None = None,
                  steps: int | None = None, splits: tuple[str, ...] = ("validation", "test")) -> dict[str, Any]:
        """First-order AdamW on the same slice, for ``seconds`` of training time or ``steps`` steps."""
        self.reset()
        for p in self.trained:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(self.trained, lr=lr, weight_decay=0.0)
        gen = torch.Generator().manual_seed(seed)
        n_train = len(self.data["train"][1])
        curve = [{"step": 0, "seconds": 0.0, **self.evaluate(splits)}]
        step, elapsed, t0 = 0, 0.0, time.perf_counter()
        next_eval = (seconds / n_evals) if seconds else max(1, (steps or 1) // n_evals)
        while True:
            step += 1
            rows = torch.randperm(n_train, generator=gen)[:self.args.batch]
            opt.zero_grad(set_to_none=True)
            loss = self.batch_loss(rows)
            loss.backward()
            opt.step()
            now = elapsed + time.perf_counter() - t0
            done = now >= seconds if seconds else step >= (steps or 1)
            if done or (now >= next_eval if seconds else step % next_eval == 0):
                elapsed = now
                curve.append({"step": step, "seconds": elapsed, "train_loss": float(loss.detach()),
                              **self.evaluate(splits)})
                t0 = time.perf_counter()
                if seconds:
                    next_eval += seconds / n_evals
            if done:
                break
        for p in self.trained:
            p.requires_grad_(False)
        return {"seed": seed, "lr": lr, "curve": curve, "final": curve[-1], "seconds": elapsed}


def main(argv: list[str] | None = None) -> None:
    args = parse_args("zo_finetune", __doc__.splitlines()[0], default_seeds=3, argv=argv, extra=_extra)
    seeds = args.seeds or (1 if args.quick else 3)
    steps = args.steps or (30 if args.quick else 3000)
    tune_steps = args.tune_steps or (10 if args.quick else 1000)
    n_val, n_test = (15, 30) if args.quick else (30, 90)
    per_class = 4 if args.quick else args.per_class
    grids = {m: g[1:3] for m, g in LR_GRIDS.items()} if args.quick else LR_GRIDS
    bench = Bench(args, args.layers, per_class, n_val, n_test)
    tuning_seed, report_seeds = tuning_and_report_seeds(seeds)

    zero_shot = bench.evaluate()
    results: dict[str, Any] = {
        "setup": {"model": "SmolLM2-135M-Instruct (fp32)", "trained_layers": args.layers,
                  "trained": bench.trained_names, "trained_params": sum(p.numel() for p in bench.trained),
                  "per_class": per_class, "n_train": len(bench.data["train"][1]), "n_val": n_val, "n_test": n_test,
                  "steps": steps, "tune_steps": tune_steps, "batch": args.batch, "mu": args.mu,
                  "directions": args.directions, "cache_seconds": bench.load_seconds,
                  "cached_path_max_abs_dev": bench.max_dev, "tuning_seed": tuning_seed, "grids": grids},
        "zero_shot": zero_shot, "tuning": {}, "runs": {},
    }
    from rich.progress import Progress

    n_tune = sum(len(g) for g in grids.values())
    with Progress() as progress:
        bar = progress.add_task("tuning + fine-tuning", total=n_tune + seeds * (len(ZO_METHODS) + 1))
        # learning rates: lowest validation loss after tune_steps on the tuning seed; AdamW is tuned on
        # tune_steps // 5 steps, far fewer than it fits into ZO-SGD's wall time later (stated in the doc)
        lrs = {}
        for method, grid in grids.items():
            scores = {}
            for lr in grid:
                if method == "adamw":
                    run = bench.run_adamw(lr, tuning_seed, 1, steps=max(1, tune_steps // 5), splits=("validation",))
                else:
                    run = bench.run_zo(method, lr, tuning_seed, tune_steps, 1, splits=("validation",))
                loss = run["final"]["validation_loss"]
                scores[lr] = loss if loss == loss else float("inf")  # a diverged (nan) run loses
                progress.advance(bar)
            choice = grid_choice(scores)
            lrs[method] = choice["best"]
            results["tuning"][method] = {"validation_loss": scores, **choice}
        results["setup"]["lr"] = lrs
        for seed in report_seeds:
            zo_time = None
            for method in ZO_METHODS:
                run = bench.run_zo(method, lrs[method], seed, steps, args.evals)
                if method == "zo-sgd":
                    zo_time = run["seconds"]
                results["runs"].setdefault(method, []).append(run)
                progress.advance(bar)
            # first-order AdamW given the same training time as this seed's ZO-SGD run
            results["runs"].setdefault("adamw", []).append(
                bench.run_adamw(lrs["adamw"], seed, args.evals, seconds=zo_time))
            progress.advance(bar)

    table = {m: {"test_acc": median_spread([r["final"]["test"] for r in runs]),
                 "val_acc": median_spread([r["final"]["validation"] for r in runs]),
                 "test_loss": median_spread([r["final"]["test_loss"] for r in runs]),
                 "steps": median_spread([r["final"]["step"] for r in runs]),
                 "seconds": median_spread([r["seconds"] for r in runs])}
             for m, runs in results["runs"].items()}
    results["table"] = table
    _plot(results, args.out)
    summary = {"zero_shot_test": zero_shot["test"], "seeds": seeds, "steps": steps, "trained": bench.trained_names,
               "lr": lrs, "lr_at_grid_edge": {m: t["edge"] for m, t in results["tuning"].items() if t["edge"]},
               **{f"{m}_test": v["test_acc"]["median"] for m, v in table.items()}}
    write_result(args, results, summary)


def _plot(results: dict[str, Any], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    names = {"zo-sgd": "ZO-SGD (MeZO)", "r-adazo": "R-AdaZO", "zoar": "ZoAR", "adamw": "AdamW (first-order)"}
    for m, runs in results["runs"].items():
        for i, r in enumerate(runs):
            xs_step = [c["step"] for c in r["curve"]]
            xs_sec = [c["seconds"] for c in r["curve"]]
            ys = [c["test"] for c in r["curve"]]
            color = {"zo-sgd": "C0", "r-adazo": "C1", "zoar": "C2", "adamw": "C3"}[m]
            if m != "adamw":
                axes[0].plot(xs_step, ys, color=color, alpha=0.8, label=names[m] if i == 0 else None)
            axes[1].plot(xs_sec, ys, color=color, alpha=0.8, label=names[m] if i == 0 else None)
    for ax in axes:
        ax.axhline(results["zero_shot"]["test"], color="k", ls="--", lw=1, label="zero-shot")
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=7)
    axes[0].set_xlabel("ZO steps")
    axes[1].set_xlabel("training wall time (s)")
    fig.tight_layout()
    save_plot(fig, out, "zo_finetune.png")


if __name__ == "__main__":
    main()
