"""PAFT and Flexora on the embedded SmolLM2-135M with LoRA (tweets sentiment), through their recipes.

    python -m benchmarks.finetune [--quick] [--out DIR] [--seeds N]

Runs ``recipes/finetune_paft.yaml`` (PAFT against one-prompt SFT and the base model; accuracy on 60 test
tweets under 10 held-out prompts never used in training) and ``recipes/finetune_flexora.yaml`` (Flexora's
layer search over the top 8 layers, LoRA retrained on the layers with α > 0, against LoRA on all 8 and on as
many random layers) with ``lmopt run``'s runner, and collects both results. ``--seeds N`` uses seeds
0..N-1 (default: the recipes' 3). ``--quick`` shrinks both recipes to a few steps on a handful of examples.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from benchmarks._common import parse_args, write_result

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _quick(cfg: dict[str, Any]) -> dict[str, Any]:
    cfg = copy.deepcopy(cfg)
    cfg["name"] += "-quick"
    cfg["task"] = {"name": "tweets", "per_class": 4, "n_val": 3, "n_test": 6}
    cfg["train"] = {"epochs": 1, "batch": 2, "lr": 1e-3, "max_length": 96}
    cfg["lora"]["layers"] = cfg["lora"]["layers"][-2:]
    if cfg["kind"] == "finetune_paft":
        cfg["prompts"] = {"train": cfg["prompts"]["train"][:2], "held_out": cfg["prompts"]["held_out"][:2]}
    else:
        cfg["search"] = {"steps": 2, "alpha_lr": 0.05, "val_batches": 1}
    return cfg


def main(argv: list[str] | None = None) -> None:
    from lmopt.runner import run_recipe

    args = parse_args("finetune", __doc__.splitlines()[0], default_seeds=3, argv=argv)
    results: dict[str, Any] = {}
    for kind in ("paft", "flexora"):
        cfg = yaml.safe_load((RECIPES / f"finetune_{kind}.yaml").read_text())
        if args.quick:
            cfg = _quick(cfg)
        if args.seeds:
            cfg["seeds"] = list(range(args.seeds))
        elif args.quick:
            cfg["seeds"] = [0]
        run_dir = run_recipe(cfg, Path(args.out) / "finetune-runs")
        results[kind] = {"recipe": cfg, "run_dir": str(run_dir),
                         "results": json.loads((run_dir / "results.json").read_text())}
    paft = results["paft"]["results"]["rows"]
    flex = results["flexora"]["results"]
    summary = {f"{c}_heldout_mean": paft[c]["held_out"]["mean"] for c in ("base", "sft", "paft")}
    summary.update({f"{c}_heldout_min": paft[c]["held_out"]["min"] for c in ("base", "sft", "paft")})
    summary.update({f"flexora_{c}_median": flex["rows"][c]["median"] for c in ("flexora", "all", "random")})
    summary["flexora_selected"] = {s: v["selected"] for s, v in flex["searches"].items()}
    write_result(args, results, summary)


if __name__ == "__main__":
    main()
