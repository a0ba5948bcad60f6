"""Preference and policy-optimisation variants on SmolLM2-135M: DPO, f-DPO, SimPO, SparsePO; GRPO, OTC, DAPO, HAPO.

Two stages, each run on the embedded SmolLM2-135M-Instruct (fp32 on CPU):

* ``pairs`` — offline preference optimisation with LoRA (r=16 on the attention and MLP projections). Task:
  two-digit additions and subtractions in a few-shot completion prompt. The base model samples 4 answers
  per training question (temperature 1); a pair is one of its own correct answers (chosen) and one of its
  own wrong answers (rejected), :func:`lmopt.rl.self_preference_pairs`. Arms, all at the same steps, batch
  and learning rate: DPO (TRL ``DPOTrainer``, β=0.1), f-DPO with forward KL, Jensen–Shannon and the
  α-divergence α=0.5 (:func:`lmopt.rl.fdpo_config`, β=0.1), SimPO with the authors' defaults (β=2, γ/β=0.25,
  no SFT term; :func:`lmopt.rl.simpo_config`) and SparsePO (:class:`lmopt.rl.SparsePOTrainer`, common mask,
  β=0.1). Reported: held-out preference accuracy (pairs built the same way from unseen questions) under two
  rewards — the reference-relative log-ratio ``log π/π_ref`` (DPO's implicit reward) and the length-averaged
  log-probability (SimPO's) — and greedy task accuracy on unseen questions, against the base model.
* ``tool`` — GRPO-family on the embedded calculator task (:func:`lmopt.rl.calc.calc_task`, few-shot
  completion style; half the questions need the tool) with :class:`lmopt.rl.tool_rollout.CalcToolRollout`.
  Arms: GRPO (TRL ``loss_type="grpo"``), OTC-GRPO (the same with :class:`lmopt.rl.OTCReward`), DAPO-style
  GRPO (token-mean loss, clip-higher ε_high=0.28; no dynamic sampling) and HAPO
  (:class:`lmopt.rl.HAPOGRPOTrainer`, released defaults). Reported: held-out greedy accuracy with the tool,
  tool calls per solved question (easy and hard apart), and the same on the training samples.

``--gpu`` selects larger budgets (documented in docs/benchmarks/preference.md; bf16, more steps and data).

    python -m benchmarks.preference [--quick] [--gpu] [--stage pairs|tool|all] [--out DIR] [--seeds N]
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from typing import Any

import torch

from benchmarks._common import median_spread, paired_difference, parse_args, save_plot, write_result

PAIRS_CPU = {"train_questions": 240, "eval_questions": 120, "samples": 4, "steps": 16, "batch": 4, "lr": 2e-4,
             "lora_r": 16, "bf16": False, "shots": False}
PAIRS_QUICK = {**PAIRS_CPU, "train_questions": 12, "eval_questions": 9, "steps": 1, "batch": 4}
PAIRS_GPU = {**PAIRS_CPU, "train_questions": 3000, "eval_questions": 600, "samples": 8, "steps": 400,
             "batch": 32, "lr": 1e-4, "bf16": True, "shots": True}
TOOL_CPU = {"prompts_per_step": 4, "num_generations": 4, "max_completion_length": 40, "steps": 8,
            "eval_questions": 32, "lr": 1e-5, "bf16": False}
TOOL_QUICK = {**TOOL_CPU, "prompts_per_step": 1, "steps": 1, "eval_questions": 4, "max_completion_length": 24}
TOOL_GPU = {**TOOL_CPU, "prompts_per_step": 16, "num_generations": 8, "steps": 200, "eval_questions": 400,
            "lr": 1e-6, "bf16": True}
PAIR_ARMS = ("dpo", "fdpo_forward_kl", "fdpo_js", "fdpo_alpha", "simpo", "sparsepo")
TOOL_ARMS = ("grpo", "otc_grpo", "dapo", "hapo")
DATA_SEED = 2000


# -- stage pairs ---------------------------------------------------------------------------------------
def tweet_questions(conf: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    """Disjoint training and held-out tweets (balanced classes, annotation confidence ≥ 0.6) after the task's
    instruction, with one fixed exemplar per class when ``conf["shots"]`` (3x longer prompts)."""
    from lmopt.data import load_tweets

    n_train, n_eval = conf["train_questions"], conf["eval_questions"]
    task = load_tweets(per_class=(n_train + n_eval) // 3 + 2, seed=DATA_SEED, min_confidence=0.6)
    examples = list(task.examples)
    random.Random(DATA_SEED).shuffle(examples)
    shots, rest = {}, []
    for e in examples:
        if e.target not in shots:
            shots[e.target] = e
        else:
            rest.append(e)
    head = task.instruction + "\n\n"
    if conf["shots"]:
        head += "".join(f"Tweet: {shots[lab].input}\nSentiment: {lab}\n\n" for lab in task.labels)
    rows = [{"prompt": f"{head}Tweet: {e.input}\nSentiment:", "answer": e.target} for e in rest]
    return {"train": rows[:n_train], "eval": rows[n_train:n_train + n_eval]}


def _answer_of(text: str) -> str:
    words = text.strip().split()
    return words[0].strip(".,!:;\"'").lower() if words else ""


def _generate(model, tok, prompts: list[str], n: int, do_sample: bool, max_new_tokens: int = 3) -> list[list[str]]:
    """``n`` completions per prompt, each cut at its first newline (the few-shot format's end of answer)."""
    tok.padding_side = "left"
    out: list[list[str]] = []
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(prompts), 16):
            batch = prompts[i:i + 16]
            enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            kw = {"do_sample": True, "temperature": 1.0, "top_k": 0} if do_sample else {"do_sample": False}
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, num_return_sequences=n,
                                 pad_token_id=tok.eos_token_id, **kw)[:, enc["input_ids"].shape[1]:]
            texts = [tok.decode(t, skip_special_tokens=True).split("\n", 1)[0] for t in ids]
            out += [texts[j * n:(j + 1) * n] for j in range(len(batch))]
    return out


def build_pairs(conf: dict[str, Any]) -> dict[str, Any]:
    """Training and held-out pairs from the base model's own samples, and the base model's greedy accuracy."""
    from lmopt.assets import load_causal_lm
    from lmopt.rl import self_preference_pairs

    model, tok = load_causal_lm(torch.float32)
    torch.manual_seed(DATA_SEED)
    out: dict[str, Any] = {}
    questions = tweet_questions(conf)
    for split, seed in (("train", DATA_SEED), ("eval", DATA_SEED + 1)):
        qs = questions[split]
        # each sample cut to its first word: the label as the model wrote it, without trailing noise
        samples = [[" " + a.split()[0] if a.split() else a for a in ss]
                   for ss in _generate(model, tok, [q["prompt"] for q in qs], conf["samples"], do_sample=True)]
        scores = [[float(_answer_of(s) == q["answer"]) for s in ss] for q, ss in zip(qs, samples)]
        out[split] = self_preference_pairs([q["prompt"] for q in qs], samples, scores, seed=seed)
        out[f"{split}_questions"] = qs
        out[f"{split}_sample_accuracy"] = statistics.fmean(v for s in scores for v in s)
    out["base_accuracy"] = task_accuracy(model, tok, out["eval_questions"])
    out["base_pref_acc_avg_logp"] = avg_logp_accuracy(model, tok, out["eval"])  # same loaded model
    return out


def task_accuracy(model, tok, questions: list[dict[str, str]]) -> float:
    answers = _generate(model, tok, [q["prompt"] for q in questions], 1, do_sample=False)
    return statistics.fmean(float(_answer_of(a[0]) == q["answer"]) for a, q in zip(answers, questions))


def _response_logps(model, tok, prompts: list[str], responses: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log π of each response given its prompt, and the response lengths in tokens."""
    sums, lens = [], []
    with torch.inference_mode():
        for p, r in zip(prompts, responses):
            pi = tok(p, add_special_tokens=False).input_ids
            ri = tok(r, add_special_tokens=False).input_ids
            ids = torch.tensor([pi + ri], device=model.device)
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            tgt = ids[0, 1:]
            lp = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)[len(pi) - 1:]
            sums.append(float(lp.sum()))
            lens.append(len(ri))
    return torch.tensor(sums), torch.tensor(lens, dtype=torch.float)


def preference_metrics(model, tok, pairs: list[dict[str, str]]) -> dict[str, float]:
    """Held-out preference accuracy: chosen above rejected by ``log π − log π_ref`` and by mean log π."""
    prompts = [p["prompt"] for p in pairs]
    model.eval()
    pc, lc = _response_logps(model, tok, prompts, [p["chosen"] for p in pairs])
    pr, lr = _response_logps(model, tok, prompts, [p["rejected"] for p in pairs])
    with model.disable_adapter():
        rc, _ = _response_logps(model, tok, prompts, [p["chosen"] for p in pairs])
        rr, _ = _response_logps(model, tok, prompts, [p["rejected"] for p in pairs])
    return {"pref_acc_logratio": float(((pc - rc) > (pr - rr)).float().mean()),
            "pref_acc_avg_logp": float((pc / lc > pr / lr).float().mean()),
            "margin_logratio": float(((pc - rc) - (pr - rr)).mean())}


def avg_logp_accuracy(model, tok, pairs: list[dict[str, str]]) -> float:
    """Share of pairs whose chosen response has the higher mean log π (no reference needed)."""
    prompts = [p["prompt"] for p in pairs]
    pc, lc = _response_logps(model, tok, prompts, [p["chosen"] for p in pairs])
    pr, lr = _response_logps(model, tok, prompts, [p["rejected"] for p in pairs])
    return float((pc / lc > pr / lr).float().mean())


def run_pair_arm(arm: str, conf: dict[str, Any], data: dict[str, Any], seed: int, use_gpu: bool) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOTrainer

    from lmopt.assets import load_causal_lm
    from lmopt.rl import SparsePOTrainer, fdpo_config, simpo_config

    model, tok = load_causal_lm(torch.bfloat16 if conf["bf16"] else torch.float32)
    tok.padding_side = "right"
    train = Dataset.from_list(data["train"])
    lora = LoraConfig(r=conf["lora_r"], lora_alpha=2 * conf["lora_r"], lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    with tempfile.TemporaryDirectory() as out_dir:
        common = {"output_dir": out_dir, "use_cpu": not use_gpu, "bf16": conf["bf16"], "seed": seed,
                  "report_to": "none", "save_strategy": "no", "logging_steps": 1, "max_steps": conf["steps"],
                  "learning_rate": conf["lr"], "per_device_train_batch_size": conf["batch"],
                  "dataloader_num_workers": 0, "gradient_checkpointing": False}
        if arm == "simpo":
            from trl.experimental.cpo import CPOTrainer

            args = simpo_config(**common)
            trainer: Any = CPOTrainer(model=model, args=args, train_dataset=train, processing_class=tok,
                                      peft_config=lora)
        else:
            div = {"dpo": "reverse_kl", "sparsepo": "reverse_kl", "fdpo_forward_kl": "forward_kl", "fdpo_js": "js",
                   "fdpo_alpha": "alpha"}[arm]
            args = fdpo_config(div, alpha=0.5, beta=0.1, precompute_ref_log_probs=False, **common)
            cls = SparsePOTrainer if arm == "sparsepo" else DPOTrainer
            trainer = cls(model=model, args=args, train_dataset=train, processing_class=tok, peft_config=lora)
        t = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t
    policy = trainer.model
    row = {"train_s": train_s, **preference_metrics(policy, tok, data["eval"]),
           "task_accuracy": task_accuracy(policy, tok, data["eval_questions"]),
           "final_loss": statistics.fmean(h["loss"] for h in trainer.state.log_history if "loss" in h)}
    if arm == "sparsepo":
        sp = [h[k] for h in trainer.state.log_history for k in h
              if k.startswith("sparsepo/") and k.endswith("_sparsity")]
        row["mask_sparsity_last"] = sp[-1] if sp else None
    return row


def stage_pairs(conf: dict[str, Any], seeds: list[int], arms: tuple[str, ...], use_gpu: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    data = build_pairs(conf)
    print(f"[preference] pairs: {len(data['train'])} train, {len(data['eval'])} held-out "
          f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    if not data["train"] or not data["eval"]:
        raise SystemExit("the base model's samples gave no preference pair; raise --train-questions")
    runs: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
    for seed in seeds:
        for arm in arms:
            runs[arm].append(run_pair_arm(arm, conf, data, seed, use_gpu))
            r = runs[arm][-1]
            print(f"[preference] seed {seed} {arm}: pref {r['pref_acc_logratio']:.3f}/{r['pref_acc_avg_logp']:.3f} "
                  f"task {r['task_accuracy']:.3f} ({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    table = {}
    for arm, rs in runs.items():
        table[arm] = {k: median_spread([r[k] for r in rs]) for k in
                      ("pref_acc_logratio", "pref_acc_avg_logp", "task_accuracy", "margin_logratio", "train_s")}
        table[arm]["task_vs_base"] = paired_difference([r["task_accuracy"] - data["base_accuracy"] for r in rs])
        if "dpo" in runs and arm != "dpo":
            table[arm]["task_vs_dpo"] = paired_difference(
                [r["task_accuracy"] - d["task_accuracy"] for r, d in zip(rs, runs["dpo"])])
        table[arm]["runs"] = rs
    return {"config": conf, "n_train_pairs": len(data["train"]), "n_eval_pairs": len(data["eval"]),
            "base": {"task_accuracy": data["base_accuracy"], "pref_acc_avg_logp": data["base_pref_acc_avg_logp"],
                     "train_sample_accuracy": data["train_sample_accuracy"],
                     "eval_sample_accuracy": data["eval_sample_accuracy"]},
            "example_pairs": data["train"][:3], "arms": table}


# -- stage tool ----------------------------------------------------------------------------------------
def tool_eval(model, tok, rows: list[dict[str, Any]], max_new_tokens: int) -> dict[str, Any]:
    """Greedy accuracy with the calculator and tool calls per solved question, easy and hard apart."""
    from lmopt.rl.calc import FEWSHOT_STOP, calc_correct
    from lmopt.rl.tool_rollout import tool_generate

    solved: dict[str, list[int]] = {"easy": [], "hard": []}
    correct = []
    for i in range(0, len(rows), 8):
        batch = rows[i:i + 8]
        out = tool_generate(model, tok, [r["prompt"] for r in batch], max_new_tokens=max_new_tokens, max_calls=3,
                            stop=(FEWSHOT_STOP,), do_sample=False)
        texts = [tok.decode(c, skip_special_tokens=True) for c in out["completion_ids"]]
        ok = calc_correct(None, texts, [r["answer"] for r in batch])
        for r, v, m in zip(batch, ok, out["calls"]):
            correct.append((r["hard"], v))
            if v:
                solved["hard" if r["hard"] else "easy"].append(m)

    def acc(hard: bool | None) -> float | None:
        vals = [v for h, v in correct if hard is None or h == hard]
        return statistics.fmean(vals) if vals else None

    calls = solved["easy"] + solved["hard"]
    return {"accuracy": acc(None), "accuracy_easy": acc(False), "accuracy_hard": acc(True),
            "calls_per_solved": statistics.fmean(calls) if calls else None,
            "calls_per_solved_easy": statistics.fmean(solved["easy"]) if solved["easy"] else None,
            "calls_per_solved_hard": statistics.fmean(solved["hard"]) if solved["hard"] else None}


def run_tool_arm(arm: str, conf: dict[str, Any], seed: int, use_gpu: bool) -> dict[str, Any]:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from lmopt.assets import load_causal_lm
    from lmopt.rl import HAPOGRPOTrainer, OTCReward
    from lmopt.rl.calc import FEWSHOT_STOP, calc_correct, calc_task, count_calls
    from lmopt.rl.tool_rollout import CalcToolRollout

    G = conf["num_generations"]
    train = calc_task(conf["prompts_per_step"] * conf["steps"], seed=DATA_SEED + seed, style="completion")
    log: list[tuple[bool, float, int]] = []

    def correct(prompts, completions, answer, hard, **kw):
        out = calc_correct(prompts, completions, answer)
        log.extend((h, v, count_calls(c)) for h, v, c in zip(hard, out, completions))
        return out

    correct.__name__ = "calc_correct"
    reward = OTCReward(correct, num_generations=G) if arm == "otc_grpo" else correct
    model, tok = load_causal_lm(torch.bfloat16 if conf["bf16"] else torch.float32)
    extra = {"grpo": {"loss_type": "grpo"}, "otc_grpo": {"loss_type": "grpo"},
             "dapo": {"loss_type": "dapo", "epsilon_high": 0.28}, "hapo": {"loss_type": "dapo"}}[arm]
    with tempfile.TemporaryDirectory() as out_dir:
        args = GRPOConfig(
            output_dir=out_dir, use_cpu=not use_gpu, bf16=conf["bf16"], seed=seed, report_to="none",
            save_strategy="no", logging_steps=1, max_steps=conf["steps"], learning_rate=conf["lr"],
            per_device_train_batch_size=conf["prompts_per_step"] * G, num_generations=G,
            max_completion_length=conf["max_completion_length"], gradient_checkpointing=False,
            dataloader_num_workers=0, shuffle_dataset=True, **extra)
        cls = HAPOGRPOTrainer if arm == "hapo" else GRPOTrainer
        trainer = cls(model=model, reward_funcs=[reward], args=args, train_dataset=Dataset.from_list(train),
                      processing_class=tok, rollout_func=CalcToolRollout(max_calls=3, stop=(FEWSHOT_STOP,)))
        t = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t
    held_out = calc_task(conf["eval_questions"], seed=DATA_SEED + 100, style="completion")
    tail = log[len(log) // 2:]  # the second half of training
    solved_tail = [m for _, v, m in tail if v >= 1.0]
    return {"train_s": train_s, **tool_eval(trainer.model, tok, held_out, conf["max_completion_length"]),
            "train_accuracy_second_half": statistics.fmean(v for _, v, _ in tail) if tail else None,
            "train_calls_per_solved_second_half": statistics.fmean(solved_tail) if solved_tail else None,
            "train_calls_mean_second_half": statistics.fmean(m for *_, m in tail) if tail else None,
            "accuracy_per_step": [statistics.fmean(v for _, v, _ in log[i:i + len(log) // conf["steps"]])
                                  for i in range(0, len(log), max(1, len(log) // conf["steps"]))]}


def stage_tool(conf: dict[str, Any], seeds: list[int], arms: tuple[str, ...], use_gpu: bool) -> dict[str, Any]:
    from lmopt.assets import load_causal_lm
    from lmopt.rl.calc import calc_task

    t0 = time.perf_counter()
    model, tok = load_causal_lm(torch.float32)
    base = tool_eval(model, tok, calc_task(conf["eval_questions"], seed=DATA_SEED + 100, style="completion"),
                     conf["max_completion_length"])
    del model
    runs: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
    for seed in seeds:
        for arm in arms:
            runs[arm].append(run_tool_arm(arm, conf, seed, use_gpu))
            r = runs[arm][-1]
            print(f"[preference] seed {seed} {arm}: held-out acc {r['accuracy']:.3f} calls/solved "
                  f"{r['calls_per_solved']} ({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    keys = ("accuracy", "accuracy_easy", "accuracy_hard", "calls_per_solved", "calls_per_solved_easy",
            "calls_per_solved_hard", "train_accuracy_second_half", "train_calls_per_solved_second_half",
            "train_calls_mean_second_half", "train_s")
    table = {}
    for arm, rs in runs.items():
        table[arm] = {k: (median_spread([r[k] for r in rs if r[k] is not None])
                          if any(r[k] is not None for r in rs) else None) for k in keys}
        table[arm]["runs"] = rs
    for a, b in (("otc_grpo", "grpo"), ("hapo", "dapo")):
        if a in runs and b in runs:
            table[a][f"accuracy_vs_{b}"] = paired_difference(
                [x["accuracy"] - y["accuracy"] for x, y in zip(runs[a], runs[b])])
    return {"config": conf, "base": base, "arms": table}


def main(argv: list[str] | None = None) -> None:
    def extra(p):
        p.add_argument("--gpu", action="store_true", help="GPU configuration (bf16, larger budgets)")
        p.add_argument("--stage", choices=("pairs", "tool", "all"), default="all")
        p.add_argument("--threads", type=int, default=2, help="torch CPU threads")

    args = parse_args("preference", __doc__.splitlines()[0], default_seeds=3, argv=argv, extra=extra)
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device; run without --gpu for the CPU configuration")
    if args.threads < 1:
        raise SystemExit("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    n_seeds = args.seeds or (1 if args.quick else args.default_seeds)
    seeds = list(range(n_seeds))
    results: dict[str, Any] = {"seeds": seeds, "gpu": args.gpu, "threads": args.threads}
    summary: dict[str, Any] = {"seeds": n_seeds, "device": "gpu" if args.gpu else "cpu"}
    t0 = time.perf_counter()
    if args.stage in ("pairs", "all"):
        conf = PAIRS_GPU if args.gpu else (PAIRS_QUICK if args.quick else PAIRS_CPU)
        arms = ("dpo", "simpo") if args.quick else PAIR_ARMS
        results["pairs"] = res = stage_pairs(dict(conf), seeds, arms, args.gpu)
        summary["pairs"] = {a: {"pref_acc": round(r["pref_acc_logratio"]["median"], 3),
                                "task_acc": round(r["task_accuracy"]["median"], 3)} for a, r in res["arms"].items()}
        summary["pairs"]["base_task_acc"] = round(res["base"]["task_accuracy"], 3)
        _plot_pairs(res, args.out)
    if args.stage in ("tool", "all"):
        conf = TOOL_GPU if args.gpu else (TOOL_QUICK if args.quick else TOOL_CPU)
        arms = ("otc_grpo",) if args.quick else TOOL_ARMS
        results["tool"] = res = stage_tool(dict(conf), seeds, arms, args.gpu)
        summary["tool"] = {a: {"acc": round(r["accuracy"]["median"], 3),
                               "calls_per_solved": (round(r["calls_per_solved"]["median"], 2)
                                                    if r["calls_per_solved"] else None)}
                           for a, r in res["arms"].items()}
        summary["tool"]["base_acc"] = round(res["base"]["accuracy"], 3)
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    write_result(args, results, summary)


def _plot_pairs(res: dict[str, Any], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(res["arms"])
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, (key, label) in enumerate((("pref_acc_logratio", "pref. acc. (log-ratio)"),
                                      ("pref_acc_avg_logp", "pref. acc. (mean log π)"),
                                      ("task_accuracy", "task accuracy"))):
        ax.bar([i + 0.27 * (k - 1) for i in range(len(arms))], [res["arms"][a][key]["median"] for a in arms],
               width=0.27, label=label)
    ax.axhline(res["base"]["task_accuracy"], color="k", ls=":", lw=1, label="base task accuracy")
    ax.set_xticks(range(len(arms)), arms, rotation=20)
    ax.set_ylabel("held-out (median over seeds)")
    ax.legend(fontsize=8)
    save_plot(fig, out, "preference_pairs.png")


if __name__ == "__main__":
    main()
