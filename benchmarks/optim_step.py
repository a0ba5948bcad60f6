"""Optimizer step cost: ms/step and bytes of optimizer state per parameter.

Every lmopt optimizer runs on the same parameters (default 32e6 fp32 params in 8 square matrices) beside
torch AdamW (fused and foreach) and the same optimizers from ``pytorch_optimizer`` where it has them. Each
candidate's timed steps are interleaved one by one with steps of torch's fused AdamW on its own copy of the
parameters, so the reported ratio to fused AdamW compares steps taken under the same machine load. Warm-up
steps (torch.compile, SOAP's eigendecompositions) are not timed.

    python -m benchmarks.optim_step [--quick] [--out DIR] [--device cpu|cuda] [--params N] [--steps K]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks._common import parse_args, save_plot, write_result

GOAL_PO_SPEEDUP = 2.0
GOAL_ADAMW_RATIO = 1.3
GOAL_MINI_BYTES = 0.01


def _extra(p: Any) -> None:
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run the steps")
    p.add_argument("--params", type=float, default=None, help="total parameters (default 32e6; quick 1e6)")
    p.add_argument("--mats", type=int, default=8, help="number of square matrices the params are split into")
    p.add_argument("--steps", type=int, default=None, help="timed steps per elementwise optimizer (default 9)")
    p.add_argument("--slow-steps", type=int, default=None, help="timed steps for Muon/SOAP (default 2)")
    p.add_argument("--skip-slow", action="store_true", help="skip Muon and SOAP")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def candidates(skip_slow: bool) -> list[tuple[str, str, Callable[[list[torch.Tensor]], Any], bool]]:
    """(name, family, factory(params), slow) for every optimizer in the comparison."""
    from lmopt import optim as lo

    out: list[tuple[str, str, Callable[[list[torch.Tensor]], Any], bool]] = [
        ("torch AdamW (foreach)", "adamw", lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True), False),
        ("lmopt Lion", "lion", lambda ps: lo.Lion(ps, lr=1e-4), False),
        ("lmopt Lion (reference)", "lion", lambda ps: lo.Lion(ps, lr=1e-4, impl="reference"), False),
        ("lmopt AdaBelief", "adabelief", lambda ps: lo.AdaBelief(ps, lr=1e-3), False),
        ("lmopt AdaBelief (reference)", "adabelief", lambda ps: lo.AdaBelief(ps, lr=1e-3, impl="reference"),
         False),
        ("lmopt EXAdam", "exadam", lambda ps: lo.EXAdam(ps, lr=1e-3), False),
        ("lmopt EXAdam (reference)", "exadam", lambda ps: lo.EXAdam(ps, lr=1e-3, impl="reference"), False),
        ("lmopt Lion (bf16 state)", "lion", lambda ps: lo.Lion(ps, lr=1e-4, state_dtype=torch.bfloat16), False),
        ("lmopt APOLLO (rank d/4)", "apollo", lambda ps: lo.APOLLO(ps, lr=1e-3, rank=0.25), False),
        ("lmopt APOLLO-Mini", "apollo_mini", lambda ps: lo.APOLLOMini(ps, lr=1e-3), False),
    ]
    try:
        from lmopt._deps import require

        po = require("pytorch_optimizer", "bench")
        out += [
            ("pytorch_optimizer Lion", "lion", lambda ps: po.Lion(ps, lr=1e-4), False),
            ("pytorch_optimizer AdaBelief", "adabelief", lambda ps: po.AdaBelief(ps, lr=1e-3, rectify=True), False),
            ("pytorch_optimizer EXAdam", "exadam", lambda ps: po.EXAdam(ps, lr=1e-3), False),
            ("pytorch_optimizer APOLLO (rank d/4)", "apollo",
             lambda ps: po.APOLLO([dict(params=ps, rank=ps[0].shape[0] // 4, projection_type="std",
                                        scale_type="channel", scale=1, update_proj_gap=200)], lr=1e-3), False),
            ("pytorch_optimizer APOLLO-Mini", "apollo_mini",
             lambda ps: po.APOLLO([dict(params=ps, rank=1, projection_type="std", scale_type="tensor", scale=128,
                                        update_proj_gap=200)], lr=1e-3), False),
        ]
        if not skip_slow:
            out += [
                ("pytorch_optimizer Muon", "muon", lambda ps: po.Muon([dict(params=ps, use_muon=True)], lr=0.02), True),
                ("pytorch_optimizer SOAP", "soap", lambda ps: po.SOAP(ps, lr=3e-3), True),
            ]
    except ImportError as exc:
        print(f"pytorch_optimizer not installed ({exc}); comparing without it")
    if not skip_slow:
        out += [
            ("lmopt Muon", "muon", lambda ps: lo.Muon(ps, lr=0.02), True),
            ("lmopt Muon (fp32 NS)", "muon", lambda ps: lo.Muon(ps, lr=0.02, ns_dtype=torch.float32), True),
            ("lmopt SOAP", "soap", lambda ps: lo.SOAP(ps, lr=3e-3), True),
        ]
        if hasattr(torch.optim, "Muon"):
            out.append(("torch Muon", "muon", lambda ps: torch.optim.Muon(ps, lr=0.02), True))
    return out


def state_bytes(opt: Any) -> int:
    """Optimizer state plus memory an optimizer keeps outside it (APOLLO's cached projections)."""
    total = opt.projection_bytes() if hasattr(opt, "projection_bytes") else 0
    for st in opt.state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor):
                total += v.numel() * v.element_size()
            elif isinstance(v, (list, tuple)):
                total += sum(t.numel() * t.element_size() for t in v if isinstance(t, torch.Tensor))
    return total


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args("optim_step", __doc__.splitlines()[0], default_seeds=1, argv=argv, extra=_extra)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was requested but torch.cuda.is_available() is False")
    n_params = int(args.params or (1e6 if args.quick else 32e6))
    side = int(round((n_params / args.mats) ** 0.5))
    steps = args.steps or (5 if args.quick else 9)
    slow_steps = args.slow_steps or (1 if args.quick else 2)
    warmup = 3
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(side, side, generator=gen) for _ in range(args.mats)]
    grads = [torch.randn(side, side, generator=gen).mul_(1e-2).to(device) for _ in range(args.mats)]
    total = sum(p.numel() for p in base)
    print(f"optim_step: {args.mats} matrices {side}x{side} = {total / 1e6:.1f}M params on {device}, "
          f"{torch.get_num_threads()} threads; timings interleaved with fused AdamW (shared, noisy CPU)")

    def fresh() -> list[torch.Tensor]:
        ps = [torch.nn.Parameter(b.clone().to(device)) for b in base]
        for p, g in zip(ps, grads):
            p.grad = g
        return ps

    def fused_adamw(ps: list[torch.Tensor]) -> Any:
        return torch.optim.AdamW(ps, lr=1e-3, fused=True)

    def timed(opt: Any) -> float:
        _sync(device)
        t0 = time.perf_counter()
        opt.step()
        _sync(device)
        return (time.perf_counter() - t0) * 1e3

    rows: list[dict[str, Any]] = []
    # --quick (CI) checks that everything runs: no Muon/SOAP, no reference/bf16 variants
    cands = [("torch AdamW (fused)", "adamw", fused_adamw, False), *candidates(args.skip_slow or args.quick)]
    if args.quick:
        cands = [c for c in cands if "(reference)" not in c[0] and "bf16" not in c[0]]
    for i, (name, family, make, slow) in enumerate(cands):
        print(f"[{i + 1}/{len(cands)}] {name} ...", flush=True)
        try:
            ps, ref_ps = fresh(), fresh()
            opt, ref = make(ps), fused_adamw(ref_ps)
            for _ in range(1 if slow else warmup):
                opt.step()
                ref.step()
            if slow:
                opt.step()  # SOAP's first step only builds its preconditioner: run one more untimed
            n = slow_steps if slow else steps
            ms, ref_ms = [], []
            for _ in range(n):
                ms.append(timed(opt))
                ref_ms.append(timed(ref))
            nbytes = state_bytes(opt)
            impl = getattr(opt, "impl", "n/a")
            if impl == "auto":
                impl = "compiled" if opt._use_compiled(ps[0].device) else "reference"
            row = dict(name=name, family=family, impl=impl, ms_median=statistics.median(ms), ms_min=min(ms),
                       ms_max=max(ms), adamw_fused_ms_median=statistics.median(ref_ms),
                       ratio_to_fused_adamw=statistics.median(ms) / statistics.median(ref_ms),
                       state_bytes=nbytes, bytes_per_param=nbytes / total, steps=n)
            del opt, ref, ps, ref_ps
        except Exception as exc:  # a third-party optimizer failing is a result, not a crash
            row = dict(name=name, family=family, error=f"{type(exc).__name__}: {exc}")
        rows.append(row)
        if "error" in row:
            print(f"    error: {row['error']}")
        else:
            print(f"    {row['ms_median']:.1f} ms/step (x{row['ratio_to_fused_adamw']:.2f} fused AdamW), "
                  f"{row['bytes_per_param']:.4f} B/param, impl={row['impl']}")

    by = {r["name"]: r for r in rows if "error" not in r}

    def ratio(a: str, b: str) -> float | None:
        # speed-up of a over b, each normalised by the fused-AdamW steps interleaved with it (robust to the
        # load of a shared machine changing between candidates)
        if a not in by or b not in by:
            return None
        return by[b]["ratio_to_fused_adamw"] / by[a]["ratio_to_fused_adamw"]

    summary: dict[str, Any] = {"params": total, "device": device}
    for fam, label in (("lion", "Lion"), ("adabelief", "AdaBelief"), ("exadam", "EXAdam")):
        ours = f"lmopt {label}"
        if ours in by:
            summary[f"{fam}_x_fused_adamw"] = round(by[ours]["ratio_to_fused_adamw"], 3)
            sp = ratio(ours, f"pytorch_optimizer {label}")
            if sp is not None:
                summary[f"{fam}_speedup_vs_pytorch_optimizer"] = round(sp, 2)
    if "lmopt APOLLO-Mini" in by:
        summary["apollo_mini_bytes_per_param"] = round(by["lmopt APOLLO-Mini"]["bytes_per_param"], 5)
    goals = {}
    for fam in ("lion", "adabelief", "exadam"):
        if f"{fam}_speedup_vs_pytorch_optimizer" in summary:
            goals[f"{fam}_2x_vs_po"] = summary[f"{fam}_speedup_vs_pytorch_optimizer"] >= GOAL_PO_SPEEDUP
        if f"{fam}_x_fused_adamw" in summary:
            goals[f"{fam}_within_1.3x_fused_adamw"] = summary[f"{fam}_x_fused_adamw"] <= GOAL_ADAMW_RATIO
    if "apollo_mini_bytes_per_param" in summary:
        goals["apollo_mini_state_le_0.01"] = summary["apollo_mini_bytes_per_param"] <= GOAL_MINI_BYTES
    summary["goals_met"] = goals

    _plot(rows, args.out)
    write_result(args, {"rows": rows, "matrices": args.mats, "side": side, "timed_steps": steps,
                        "slow_timed_steps": slow_steps, "warmup_steps": warmup}, summary)
    return summary


def _plot(rows: list[dict[str, Any]], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r]
    if not ok:
        return
    names = [r["name"] for r in ok]
    colors = ["tab:blue" if n.startswith("lmopt") else "tab:gray" if n.startswith("torch") else "tab:orange"
              for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.35 * len(ok) + 1.5), sharey=True)
    axes[0].barh(names, [r["ratio_to_fused_adamw"] for r in ok], color=colors)
    axes[0].set_xscale("log")
    axes[0].axvline(1.0, color="k", lw=0.8)
    axes[0].set_xlabel("step time / torch fused AdamW step time (log)")
    axes[1].barh(names, [max(r["bytes_per_param"], 1e-4) for r in ok], color=colors)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("optimizer state, bytes per parameter (log)")
    axes[0].invert_yaxis()
    fig.suptitle("Optimizer step cost (blue: lmopt, orange: pytorch_optimizer, gray: torch)")
    save_plot(fig, out, "optim_step.png")


if __name__ == "__main__":
    main()
