"""TRL GRPO with and without ReDit reward dithering on SmolLM2-135M-Instruct and reasoning-gym arithmetic.

Each arm trains the embedded SmolLM2-135M-Instruct from the same weights with TRL's ``GRPOTrainer`` on the
same prompts (reasoning-gym ``basic_arithmetic``, two one-digit terms, "+"/"-"), the same seeds and the
same step budget; the reward is reasoning-gym's own ``score_answer`` applied to the last number of the
completion (1 for the exact number). Arms:

* ``vanilla``: plain GRPO (TRL defaults: per-group std scaling);
* ``redit``: the reward wrapped in :class:`lmopt.rl.ReDitReward` (Gaussian, m=0.05, constant);
* ``redit_batch``: ReDit with ``scale_rewards="batch"`` (the variant the toy benchmark favours).

Reported per arm (median and spread over seeds): the undithered training reward per step, the fraction
of zero-variance groups (on the undithered rewards), TRL's gradient norm, held-out greedy accuracy after
training (full runs), and wall time as a ratio to the vanilla arm of the same run.

CPU (default): a short configuration sized for a 2-core machine. ``--gpu``: the configuration meant for
one GPU (bf16, 8 generations of 64 tokens for 16 prompts per step, 200 steps, 200 held-out prompts); it is
documented in docs/benchmarks/rl_grpo.md and has not been run here.

    python -m benchmarks.rl_grpo [--quick] [--gpu] [--out DIR] [--seeds N] [--steps N]
"""

from __future__ import annotations

import re
import statistics
import sys
import tempfile
import time
from typing import Any

import torch

from benchmarks._common import median_spread, parse_args, save_plot, write_result

CPU = {"prompts_per_step": 2, "num_generations": 4, "max_completion_length": 16, "steps": 8,
       "eval_prompts": 16, "lr": 1e-5, "bf16": False}
QUICK = {**CPU, "steps": 2, "eval_prompts": 0, "max_completion_length": 8}
GPU = {"prompts_per_step": 16, "num_generations": 8, "max_completion_length": 64, "steps": 200,
       "eval_prompts": 200, "lr": 1e-6, "bf16": True}
ARMS = {"vanilla": {}, "redit": {"redit_m": 0.05}, "redit_batch": {"redit_m": 0.05, "scale_rewards": "batch"}}
SUFFIX = " Answer with the number only."
_NUMBER = re.compile(r"-?\d+")


def _load_policy(dtype: torch.dtype):
    """The embedded SmolLM2 as a trainable fp32/bf16 model with its tokenizer."""
    from lmopt.assets import load_causal_lm

    return load_causal_lm(dtype)


def _task(n_train: int, n_eval: int, seed: int):
    import reasoning_gym
    from datasets import Dataset

    gym = reasoning_gym.create_dataset("basic_arithmetic", size=n_train + max(n_eval, 1), seed=seed,
                                       min_terms=2, max_terms=2, min_digits=1, max_digits=1, operators=("+", "-"))
    rows = [{"prompt": [{"role": "user", "content": gym[i]["question"] + SUFFIX}], "gym_index": i}
            for i in range(len(gym))]
    return gym, Dataset.from_list(rows[:n_train]), rows[n_train:n_train + n_eval]


def score(gym, text: str, entry: dict) -> float:
    """reasoning-gym's score of the last number in ``text`` (the model rarely answers with the bare number)."""
    numbers = _NUMBER.findall(text)
    return float(gym.score_answer(numbers[-1] if numbers else text.strip(), entry))


def _greedy_accuracy(model, tok, gym, rows, max_new_tokens: int) -> float:
    if not rows:
        return float("nan")
    model.eval()
    tok.padding_side = "left"
    scores = []
    with torch.inference_mode():
        for i in range(0, len(rows), 8):
            batch = rows[i:i + 8]
            texts = [tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in batch]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
            for r, ids in zip(batch, out[:, enc["input_ids"].shape[1]:]):
                text = tok.decode(ids, skip_special_tokens=True).strip()
                scores.append(score(gym, text, gym[r["gym_index"]]))
    return sum(scores) / len(scores)


def run_arm(arm: str, conf: dict[str, Any], seed: int, use_gpu: bool) -> dict[str, Any]:
    from trl import GRPOConfig, GRPOTrainer

    from lmopt.rl import ReDitReward, zero_variance_groups

    spec = ARMS[arm]
    n_train = conf["prompts_per_step"] * conf["steps"]
    gym, train, held_out = _task(n_train, conf["eval_prompts"], seed=1000 + seed)
    raw: list[float] = []

    def arithmetic_correct(prompts, completions, gym_index, **kw):
        out = [score(gym, c[-1]["content"], gym[i]) for c, i in zip(completions, gym_index)]
        raw.extend(out)
        return out

    reward = (ReDitReward(arithmetic_correct, m=spec["redit_m"], distribution="gaussian", seed=seed)
              if "redit_m" in spec else arithmetic_correct)
    model, tok = _load_policy(torch.bfloat16 if conf["bf16"] else torch.float32)
    G = conf["num_generations"]
    with tempfile.TemporaryDirectory() as out_dir:
        args = GRPOConfig(
            output_dir=out_dir, use_cpu=not use_gpu, bf16=conf["bf16"], seed=seed, report_to="none",
            save_strategy="no", logging_steps=1, max_steps=conf["steps"], learning_rate=conf["lr"],
            per_device_train_batch_size=conf["prompts_per_step"] * G, num_generations=G,
            max_completion_length=conf["max_completion_length"], gradient_checkpointing=False,
            scale_rewards=spec.get("scale_rewards", "group"), dataloader_num_workers=0, shuffle_dataset=True,
        )
        trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=train,
                              processing_class=tok)
        t = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t
    per_step = G * conf["prompts_per_step"]
    raw_t = torch.tensor(raw[: per_step * conf["steps"]])
    steps = raw_t.view(conf["steps"], per_step)
    zv = [float(zero_variance_groups(s, G).float().mean()) for s in steps]
    logs = [h for h in trainer.state.log_history if "grad_norm" in h]
    acc = _greedy_accuracy(trainer.model, tok, gym, held_out, conf["max_completion_length"])
    return {"reward_per_step": steps.mean(dim=1).tolist(), "zero_var_frac_per_step": zv,
            "grad_norm_per_step": [float(h["grad_norm"]) for h in logs], "train_s": train_s,
            "final_reward": float(steps[-max(1, conf["steps"] // 4):].mean()), "held_out_accuracy": acc}


def main(argv: list[str] | None = None) -> None:
    def extra(p):
        p.add_argument("--gpu", action="store_true", help="GPU configuration (bf16, larger batches, 200 steps)")
        p.add_argument("--steps", type=int, default=None, help="override the number of GRPO steps")
        p.add_argument("--threads", type=int, default=1,
                       help="torch CPU threads (default 1: on a shared 2-core machine more threads were 5-12x slower)")

    args = parse_args("rl_grpo", __doc__.splitlines()[0], default_seeds=2, argv=argv, extra=extra)
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device; run without --gpu for the CPU configuration")
    if args.threads < 1:
        raise SystemExit("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    conf = dict(GPU if args.gpu else (QUICK if args.quick else CPU))
    if args.steps:
        conf["steps"] = args.steps
    n_seeds = args.seeds or (1 if args.quick else args.default_seeds)
    arms = ["vanilla", "redit"] if args.quick else list(ARMS)
    results: dict[str, Any] = {"config": {**conf, "seeds": n_seeds, "gpu": args.gpu, "threads": args.threads},
                               "arms": {}}
    runs: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
    t0 = time.perf_counter()
    for seed in range(n_seeds):
        for arm in arms:
            runs[arm].append(run_arm(arm, conf, seed, args.gpu))
            print(f"[rl_grpo] seed {seed} {arm}: final reward {runs[arm][-1]['final_reward']:.3f} "
                  f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    base_time = statistics.median(r["train_s"] for r in runs["vanilla"])
    summary: dict[str, Any] = {"steps": conf["steps"], "seeds": n_seeds, "device": "gpu" if args.gpu else "cpu"}
    for arm, rs in runs.items():
        row = {
            "final_reward": median_spread([r["final_reward"] for r in rs]),
            "held_out_accuracy": (median_spread([r["held_out_accuracy"] for r in rs])
                                  if conf["eval_prompts"] else None),
            "zero_var_group_frac": median_spread([statistics.mean(r["zero_var_frac_per_step"]) for r in rs]),
            "grad_norm_mean": median_spread([statistics.mean(r["grad_norm_per_step"]) for r in rs]),
            "time_ratio_to_vanilla": statistics.median(r["train_s"] for r in rs) / base_time,
            "runs": rs,
        }
        results["arms"][arm] = row
        summary[arm] = {"final_reward": round(row["final_reward"]["median"], 4),
                        "held_out_accuracy": (round(row["held_out_accuracy"]["median"], 4)
                                              if row["held_out_accuracy"] else None)}
    _plot(runs, args.out)
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    write_result(args, results, summary)


def _plot(runs: dict[str, list[dict[str, Any]]], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, rs in runs.items():
        n = len(rs[0]["reward_per_step"])
        med = [statistics.median(r["reward_per_step"][i] for r in rs) for i in range(n)]
        ax.plot(range(1, n + 1), med, label=arm)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("undithered training reward (median over seeds)")
    ax.legend()
    save_plot(fig, out, "rl_grpo_reward.png")


if __name__ == "__main__":
    main()
