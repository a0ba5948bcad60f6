"""ZO fine-tuning of the embedded SmolLM2-135M-Instruct on the embedded tweets sentiment task.

    python -m benchmarks.zo_finetune [--quick] [--out DIR] [--seeds N]

Prompt-based classification (MeZO's setting, arXiv 2305.17333 Sec. 3): the prompt is the task's template
("... Tweet: {text}\\nSentiment:") and the prediction is the label word (" negative" / " neutral" /
" positive", one token each) with the highest next-token logit; the training loss is cross-entropy over
those three logits. Train: 16 examples per class (48); fixed validation (30) and test (90) sets
(stratified split, seed 0). Compared on the same data, side by side: zero-shot, ZO-SGD (MeZO), R-AdaZO
and ZoAR, and first-order AdamW given the same wall time as the ZO-SGD run of that seed.

Reduced to fit a shared 2-core CPU (stated in the results): only the top decoder layer (``--layers``) and
the final norm are trained (ZO perturbs only them: PEFT-style restriction to named modules); the frozen
bottom of the network is run once per example and its hidden states are cached, so every query runs
only the trained layers (the cached path is checked against the full model's logits before training).
Minibatch 8 per step, 40 ZO steps (``--steps``, ``--batch``). Learning rates were picked on the validation set from a
small grid in a preliminary run (``--lr-*`` flags).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from benchmarks._common import median_spread, parse_args, save_plot, write_result

LABEL_WORDS = (" negative", " neutral", " positive")


def _extra(p: Any) -> None:
    p.add_argument("--layers", type=int, default=1, help="top decoder layers trained (default 1)")
    p.add_argument("--steps", type=int, default=None, help="ZO steps per run (default 40, quick 10)")
    p.add_argument("--batch", type=int, default=8, help="training examples per step")
    p.add_argument("--per-class", type=int, default=16)
    p.add_argument("--lr-zo-sgd", type=float, default=3e-4)
    p.add_argument("--lr-r-adazo", type=float, default=1e-4)
    p.add_argument("--lr-zoar", type=float, default=3e-4)
    p.add_argument("--lr-adamw", type=float, default=1e-4)
    p.add_argument("--mu", type=float, default=1e-3)


class CachedTop(torch.nn.Module):
    """The top ``k`` decoder layers + final norm of a Llama model, run on cached hidden states.

    ``forward(h, last)`` returns the label-word logits at position ``last`` of each row (right padding,
    causal attention: real tokens never attend to the padding that follows them).
    """

    def __init__(self, model: Any, k: int, label_ids: list[int]) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(model.model.layers[-k:])
        self.norm = model.model.norm
        self.rotary = model.model.rotary_emb
        self.register_buffer("label_w", model.lm_head.weight[label_ids].detach().clone(), persistent=False)

    def forward(self, h: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
        pe = self.rotary(h, position_ids=pos)
        for layer in self.layers:
            out = layer(h, attention_mask=None, position_embeddings=pe, position_ids=pos)
            h = out[0] if isinstance(out, tuple) else out
        h = self.norm(h)
        h_last = h[torch.arange(h.shape[0]), last]
        return h_last @ self.label_w.T


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


def accuracy(top: CachedTop, cache: tuple[list, torch.Tensor], labels: torch.Tensor) -> float:
    chunks, lasts = cache
    correct = 0
    with torch.no_grad():
        off = 0
        for c in chunks:
            n = c.shape[0]
            pred = top(c, lasts[off:off + n]).argmax(-1)
            correct += int((pred == labels[off:off + n]).sum())
            off += n
    return correct / len(labels)


def main(argv: list[str] | None = None) -> None:
    args = parse_args("zo_finetune", __doc__.splitlines()[0], default_seeds=3, argv=argv, extra=_extra)
    seeds = args.seeds or (1 if args.quick else 3)
    k = args.layers
    steps = args.steps or (10 if args.quick else 40)
    n_val, n_test = (15, 30) if args.quick else (30, 90)
    per_class = 4 if args.quick else args.per_class
    bsz = args.batch
    eval_every = max(1, steps // 4)

    from lmopt.assets import load_causal_lm
    from lmopt.data import load_task
    from lmopt.zo import OPTIMIZERS

    t_load = time.perf_counter()
    model, tok = load_causal_lm()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    task = load_task("tweets")
    splits = task.split(seed=0, n_train=3 * per_class, n_val=n_val, n_test=n_test)
    label_ids = [tok.encode(w, add_special_tokens=False)[0] for w in LABEL_WORDS]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    data = {}
    for name, exs in (("train", splits.train), ("validation", splits.validation), ("test", splits.test)):
        ids, labels = encode(tok, task, exs)
        data[name] = (cache_hidden(model, ids, k, pad), labels, ids)
    load_seconds = time.perf_counter() - t_load

    top = CachedTop(model, k, label_ids)
    initial = {n: p.detach().clone() for n, p in top.named_parameters()}

    # the cached path must reproduce the full model's label logits
    with torch.no_grad():
        ids = data["test"][2][:4]
        full = []
        for x in ids:
            logits = model(input_ids=torch.tensor([x])).logits[0, -1, label_ids]
            full.append(logits)
        full_t = torch.stack(full)
        (chunks, lasts) = data["test"][0]
        cached = top(chunks[0][:4], lasts[:4])
        max_dev = float((full_t - cached).abs().max())
    if max_dev > 1e-3:
        raise RuntimeError(f"cached top-layer path deviates from the full model by {max_dev}")

    def reset() -> None:
        with torch.no_grad():
            for n, p in top.named_parameters():
                p.copy_(initial[n])

    train_cache, train_labels, _ = data["train"]
    n_train = len(train_labels)

    def batch_loss(rows: torch.Tensor) -> torch.Tensor:
        h, last = gather_rows(train_cache[0], train_cache[1], rows)
        return torch.nn.functional.cross_entropy(top(h, last), train_labels[rows])

    def evaluate() -> dict[str, float]:
        return {"validation": accuracy(top, data["validation"][0], data["validation"][1]),
                "test": accuracy(top, data["test"][0], data["test"][1])}

    zero_shot = evaluate()
    results: dict[str, Any] = {
        "setup": {"model": "SmolLM2-135M-Instruct (fp32)", "trained_layers": k, "per_class": per_class,
                  "n_train": n_train, "n_val": n_val, "n_test": n_test, "steps": steps, "batch": bsz,
                  "mu": args.mu, "trained_params": sum(p.numel() for p in top.parameters()),
                  "cache_seconds": load_seconds, "cached_path_max_abs_dev": max_dev,
                  "lr": {"zo-sgd": args.lr_zo_sgd, "r-adazo": args.lr_r_adazo, "zoar": args.lr_zoar,
                         "adamw": args.lr_adamw}},
        "zero_shot": zero_shot, "runs": {},
    }
    from rich.progress import Progress

    methods = ["zo-sgd", "r-adazo", "zoar"]
    with Progress() as progress:
        task_bar = progress.add_task("fine-tuning", total=seeds * (len(methods) + 1))
        for seed in range(seeds):
            zo_time = None
            for method in methods:
                reset()
                lr = results["setup"]["lr"][method]
                kwargs: dict[str, Any] = {"lr": lr, "mu": args.mu, "seed": seed}
                if method == "zoar":
                    kwargs.update(q=2, history=4)
                opt = OPTIMIZERS[method](list(top.parameters()), **kwargs)
                gen = torch.Generator().manual_seed(seed)
                curve = [{"step": 0, "seconds": 0.0, "queries": 0, **zero_shot}]
                t0 = time.perf_counter()
                losses = []
                for step in range(1, steps + 1):
                    rows = torch.randperm(n_train, generator=gen)[:bsz]
                    losses.append(opt.step(lambda rows=rows: batch_loss(rows)))
                    if step % eval_every == 0 or step == steps:
                        elapsed = time.perf_counter() - t0
                        curve.append({"step": step, "seconds": elapsed, "queries": opt.total_queries,
                                      "train_loss": sum(losses[-eval_every:]) / len(losses[-eval_every:]),
                                      **evaluate()})
                        t0 = time.perf_counter() - elapsed  # evaluation time is not training time
                elapsed = curve[-1]["seconds"]
                if method == "zo-sgd":
                    zo_time = elapsed
                results["runs"].setdefault(method, []).append({"seed": seed, "curve": curve,
                                                               "final": curve[-1], "seconds": elapsed})
                progress.advance(task_bar)
            # first-order AdamW with the same wall time as this seed's ZO-SGD run
            reset()
            for p in top.parameters():
                p.requires_grad_(True)
            opt = torch.optim.AdamW(top.parameters(), lr=args.lr_adamw, weight_decay=0.0)
            gen = torch.Generator().manual_seed(seed)
            curve = [{"step": 0, "seconds": 0.0, **zero_shot}]
            t0 = time.perf_counter()
            step = 0
            next_eval = (zo_time or 1.0) / 4
            while True:
                step += 1
                rows = torch.randperm(n_train, generator=gen)[:bsz]
                opt.zero_grad(set_to_none=True)
                loss = batch_loss(rows)
                loss.backward()
                opt.step()
                elapsed = time.perf_counter() - t0
                if elapsed >= next_eval or elapsed >= (zo_time or 0):
                    curve.append({"step": step, "seconds": elapsed, "train_loss": float(loss.detach()),
                                  **evaluate()})
                    t0 = time.perf_counter() - elapsed
                    next_eval += (zo_time or 1.0) / 4
                if elapsed >= (zo_time or 0):
                    break
            for p in top.parameters():
                p.requires_grad_(False)
            results["runs"].setdefault("adamw", []).append({"seed": seed, "curve": curve, "final": curve[-1],
                                                            "seconds": curve[-1]["seconds"]})
            progress.advance(task_bar)

    table = {m: {"test_acc": median_spread([r["final"]["test"] for r in runs]),
                 "val_acc": median_spread([r["final"]["validation"] for r in runs]),
                 "steps": median_spread([r["final"]["step"] for r in runs]),
                 "seconds": median_spread([r["seconds"] for r in runs])}
             for m, runs in results["runs"].items()}
    results["table"] = table
    _plot(results, args.out)
    summary = {"zero_shot_test": zero_shot["test"], "seeds": seeds, "steps": steps, "layers": k,
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
