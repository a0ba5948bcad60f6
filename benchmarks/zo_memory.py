"""Peak memory and time of one ZO step vs one inference pass vs one AdamW step on SmolLM2-135M.

    python -m benchmarks.zo_memory [--quick] [--out DIR] [--seeds N] [--device cpu|cuda]

One process loads the embedded SmolLM2-135M-Instruct (fp32) once and runs, on the same batch
(8 x 64 tokens; quick: 2 x 32): a forward-only pass under ``torch.no_grad()``, one ZO-SGD step
(``lmopt.zo.ZOSGD``: two forwards, in-place perturbation with exact restore, seed-regenerated update) for
each direction kind (``gaussian``: torch.randn, the default; ``rademacher`` and ``gaussian-counter``: the
counter-based generator; one untimed warm-up step each, which compiles the kernels), and one AdamW step
(forward + backward + update, state allocated on the first step). Peak memory is the
process RSS sampled every ~1 ms by a background thread during each phase (CPU: no allocator counters);
each phase is repeated ``--seeds`` times (default 3) and the median is reported, with time as a ratio to
the forward pass measured in the same run. With ``--device cuda`` the model runs on the GPU, peak memory
is ``torch.cuda.max_memory_allocated`` per phase and every phase ends with a synchronisation. Goals: ZO peak
<= 1.10 x inference, ZO step time <= 2.2 x one forward, AdamW peak >= 3 x ZO peak.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from typing import Any

import torch

from benchmarks._common import median_spread, parse_args, write_result

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE


class PeakRSS:
    """Max RSS seen by a sampling thread between ``__enter__`` and ``__exit__``."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.peak = rss_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


class PeakCUDA:
    """Peak bytes allocated by torch on the current GPU between ``__enter__`` and ``__exit__``."""

    def __enter__(self) -> PeakCUDA:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.cuda.synchronize()
        self.peak = torch.cuda.max_memory_allocated()


def _extra(p: Any) -> None:
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the model runs")


def main(argv: list[str] | None = None) -> None:
    args = parse_args("zo_memory", __doc__.splitlines()[0], default_seeds=3, argv=argv, extra=_extra)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    Peak = PeakCUDA if cuda else PeakRSS
    reps = args.seeds or (1 if args.quick else 3)
    batch, seq = (2, 32) if args.quick else (8, 64)

    from lmopt.assets import load_causal_lm
    from lmopt.zo import ZOSGD

    model, _ = load_causal_lm()
    model.eval().to(args.device)
    n_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen).to(args.device)
    inputs = {"input_ids": ids, "labels": ids}
    rest_rss = torch.cuda.memory_allocated() if cuda else rss_bytes()

    def forward_loss() -> torch.Tensor:
        return model(**inputs).loss

    kinds = {"zo_step": "gaussian", "zo_step_rademacher": "rademacher",
             "zo_step_gaussian_counter": "gaussian-counter"}
    phases: dict[str, dict[str, list[float]]] = {k: {"peak": [], "seconds": []}
                                                 for k in ("inference", *kinds, "adamw_step")}
    from rich.progress import Progress

    zo_log_numel = []
    with Progress() as progress:
        bar = progress.add_task("phases", total=(2 + len(kinds)) * reps)
        for _ in range(reps):
            with Peak() as m, torch.no_grad():
                t0 = time.perf_counter()
                forward_loss()
                if cuda:
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
            phases["inference"]["peak"].append(m.peak)
            phases["inference"]["seconds"].append(dt)
            progress.advance(bar)
        for phase, kind in kinds.items():
            opt = ZOSGD(model.parameters(), lr=1e-7, mu=1e-3, seed=0, directions=kind)
            opt.step(forward_loss)  # warm-up: compiles the perturbation (and counter) kernels
            for _ in range(reps):
                with Peak() as m:
                    t0 = time.perf_counter()
                    opt.step(forward_loss)
                    if cuda:
                        torch.cuda.synchronize()
                    dt = time.perf_counter() - t0
                phases[phase]["peak"].append(m.peak)
                phases[phase]["seconds"].append(dt)
                if phase == "zo_step":
                    zo_log_numel.append(opt.last_step["restore_log_numel"])
                progress.advance(bar)
            del opt
        model.train()
        adamw = torch.optim.AdamW(model.parameters(), lr=1e-5)
        for _ in range(reps):
            with Peak() as m:
                t0 = time.perf_counter()
                adamw.zero_grad(set_to_none=False)
                forward_loss().backward()
                adamw.step()
                if cuda:
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
            phases["adamw_step"]["peak"].append(m.peak)
            phases["adamw_step"]["seconds"].append(dt)
            progress.advance(bar)

    med = {k: {"peak_bytes": statistics.median(v["peak"]), "seconds": statistics.median(v["seconds"])}
           for k, v in phases.items()}
    inf, zo, adam = med["inference"], med["zo_step"], med["adamw_step"]
    ratios = {
        "zo_peak_over_inference": zo["peak_bytes"] / inf["peak_bytes"],
        "zo_time_over_forward": zo["seconds"] / inf["seconds"],
        "zo_rademacher_time_over_forward": med["zo_step_rademacher"]["seconds"] / inf["seconds"],
        "zo_gaussian_counter_time_over_forward": med["zo_step_gaussian_counter"]["seconds"] / inf["seconds"],
        "adamw_peak_over_zo": adam["peak_bytes"] / zo["peak_bytes"],
        "adamw_time_over_forward": adam["seconds"] / inf["seconds"],
        "zo_extra_over_inference_mb": (zo["peak_bytes"] - inf["peak_bytes"]) / 2**20,
    }
    results = {
        "setup": {"model": "SmolLM2-135M-Instruct fp32", "device": args.device, "params": n_params,
                  "batch": batch, "seq": seq, "reps": reps, "rss_after_load_mb": rest_rss / 2**20,
                  "zo_chunk_elements": 1 << 20,
                  "param_mb": n_params * 4 / 2**20, "threads": torch.get_num_threads()},
        "phases": {k: {"peak_mb": median_spread([p / 2**20 for p in v["peak"]]),
                       "seconds": median_spread(v["seconds"])} for k, v in phases.items()},
        "ratios": ratios,
        "zo_restore_log_elements": zo_log_numel,
        "goals": {"zo_peak_le_1.10x_inference": ratios["zo_peak_over_inference"] <= 1.10,
                  "zo_time_le_2.2x_forward": ratios["zo_time_over_forward"] <= 2.2,
                  "zo_rademacher_time_le_2.2x_forward": ratios["zo_rademacher_time_over_forward"] <= 2.2,
                  "adamw_peak_ge_3x_zo": ratios["adamw_peak_over_zo"] >= 3.0},
    }
    summary = {k: round(v, 3) for k, v in ratios.items()}
    summary.update({k: v for k, v in results["goals"].items()})
    write_result(args, results, summary)


if __name__ == "__main__":
    main()
