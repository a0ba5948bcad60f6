"""MCTS-DPO: the released backup, PUCT and value rules on hand-built trees, the search on a scripted task,
pairs with confidence-based smoothing, the LM environment, and the per-pair smoothed DPO loss on TRL."""

from __future__ import annotations

import math

import pytest

from lmopt.rl.mcts_dpo import (
    MCTS,
    LMStepEnvironment,
    MCTSConfig,
    Node,
    Step,
    confidence,
    mcts_preference_data,
    preference_pairs,
    step_value,
)


def test_value_rules_of_the_release():
    assert step_value(0.8, None, parent_depth=2, parent_value=0.3, terminal=False) == 0.8
    assert step_value(0.8, None, parent_depth=5, parent_value=0.3, terminal=False) == pytest.approx(0.4)  # /(5-3)
    assert step_value(0.0, None, parent_depth=1, parent_value=0.3, terminal=False) == 0.3  # inherits
    assert step_value(0.6, -1.0, parent_depth=1, parent_value=0.3, terminal=True) == pytest.approx(-0.4)
    assert step_value(0.6, 1.0, parent_depth=1, parent_value=0.3, terminal=False) == 0.6  # outcome only at the end


def test_backup_and_puct_by_hand():
    root = Node(None)
    a = Node(Step("a\n", -1.0, 2, False), root, value=0.5)
    b = Node(Step("b\n", -3.0, 2, False), root, value=0.2)
    root.children = [a, b]
    assert (a.r, a.Q) == (0.5, 0.5)  # Q starts at V(parent) + r
    leaf = Node(Step("c\n", -0.5, 1, True), a, value=1.4)
    a.children = [leaf]
    search = MCTS(env=None, config=MCTSConfig(w_exp=1.0, gamma=1.0))
    search._backpropagate([root, a, leaf])
    assert leaf.Q == pytest.approx(0.9) and leaf.N == 1  # r = 1.4 - 0.5, V = 0
    assert a.V == pytest.approx(0.9) and a.Q == pytest.approx(0.5 + 0.9)
    assert root.V == pytest.approx((1 * 1.4 + 1 * 0.2) / 2)  # visit-weighted mean with max(1, N) weights
    root.N = 4
    pa = a.Q + a.prior * math.sqrt(4) / (1 + a.N)
    assert a.prior == pytest.approx(math.exp(-1.0 / 2 ** 1.25))
    assert search._puct(a) == pytest.approx(pa)


class ScriptedSteps:
    """Two candidate steps per node, "good" and "bad"; the self-evaluation trusts good steps; the answer is
    right only after good steps all the way."""

    def __init__(self):
        self.calls = 0

    def propose(self, steps, n):
        self.calls += 1
        depth = len(steps)
        done = depth >= 1
        return [Step(f"good {depth}\n", -1.0, 2, done), Step(f"bad {depth}\n", -1.2, 2, done)][:n]

    def evaluate(self, steps, step):
        conf = 0.9 if step.text.startswith("good") else 0.2
        outcome = None
        if step.terminal:
            outcome = 1.0 if all(s.startswith("good") for s in [*steps, step.text]) else -1.0
        return conf, outcome


def test_search_follows_good_steps_and_pairs_prefer_them():
    search = MCTS(ScriptedSteps(), MCTSConfig(n_iters=8, depth_limit=3))
    path = search.run()
    assert [n.step.text for n in path[1:]] == ["good 0\n", "good 1\n"]
    pairs = preference_pairs(path, choose_worst=True)
    assert [p["chosen"] for p in pairs] == ["good 0\n", "good 1\n"]
    assert [p["rejected"] for p in pairs] == ["bad 0\n", "bad 1\n"]
    for p in pairs:
        assert p["chosen_q"] > p["rejected_q"]
        assert p["confidence"] == pytest.approx(1 / (1 + p["rejected_visits"] / max(1, p["chosen_visits"])))
        assert p["label_smoothing"] == pytest.approx(min(1 - p["confidence"], 0.5))
    assert pairs[1]["prompt_steps"] == ["good 0\n"]
    assert confidence(30, 10) == pytest.approx(0.75) and confidence(0, 3) == pytest.approx(0.25)


def test_lm_environment_and_preference_rows():
    from lmopt.lm import LM, ScriptedBackend

    def respond(prompt, config, j):
        if prompt.rstrip().endswith("one step per line."):
            return ["3 + 4 = 7\nmore", "3 + 4 = 8\nmore"][j % 2]
        if prompt.rstrip().endswith("= 8"):  # a wrong step leads to a wrong answer
            return "The answer is 8.\n"
        return ["The answer is 7.\n", "The answer is 8.\n"][j % 2]

    def score(prompt, cont):
        if cont in ("A", "B"):  # self-evaluation: steps stating 7 look right
            right = "= 7" in prompt.rsplit("New step:", 1)[1] or "is 7" in prompt.rsplit("New step:", 1)[1]
            return -0.1 if (cont == "B") == right else -2.5
        return -1.0

    lm = LM(ScriptedBackend(respond, score))
    env = LMStepEnvironment(lm, "What is 3 + 4?", "7", solution="3 + 4 = 7")
    steps = env.propose([], 2)
    assert [s.text for s in steps] == ["3 + 4 = 7\n", "3 + 4 = 8\n"] and not any(s.terminal for s in steps)
    conf, outcome = env.evaluate([], steps[0])
    assert conf == pytest.approx(1 / (1 + math.exp(-2.5 + 0.1))) and outcome is None
    final = env.propose(["3 + 4 = 7\n"], 2)
    assert all(s.terminal for s in final)
    assert env.evaluate(["3 + 4 = 7\n"], final[0])[1] == 1.0 and env.evaluate(["3 + 4 = 7\n"], final[1])[1] == -1.0
    rows = mcts_preference_data(lm, [{"question": "What is 3 + 4?", "answer": "7", "solution": "3 + 4 = 7"}],
                                MCTSConfig(n_iters=4, depth_limit=2))
    assert rows and all({"prompt", "chosen", "rejected", "label_smoothing"} <= set(r) for r in rows)
    assert rows[0]["chosen"] == "3 + 4 = 7\n" and rows[0]["rejected"] == "3 + 4 = 8\n"
    with pytest.raises(ValueError, match="'question' and 'answer'"):
        mcts_preference_data(lm, [{"q": "x"}])


pytest.importorskip("trl")

PAIRS = [{"prompt": "2+2=", "chosen": " 4", "rejected": " 5 or so"},
         {"prompt": "Capital of France?", "chosen": " Paris", "rejected": " Rome"}]


def _trainer(tmp_path, cls, rows, steps=1):
    from datasets import Dataset
    from test_trl import tiny_model  # tests/rl is on sys.path (no package)
    from transformers import AutoTokenizer
    from trl import DPOConfig

    from lmopt.assets import smollm2_dir

    tok = AutoTokenizer.from_pretrained(str(smollm2_dir()))
    args = DPOConfig(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=2, max_steps=steps,
                     report_to="none", save_strategy="no", bf16=False, beta=0.5, logging_steps=1)
    return cls(model=tiny_model(tok, 0), ref_model=tiny_model(tok, 1), args=args,
               train_dataset=Dataset.from_list(rows), processing_class=tok)


def test_confidence_dpo_equals_trl_without_smoothing_and_the_formula_with_it(tmp_path):
    import torch
    from trl import DPOTrainer

    from lmopt.rl.mcts_dpo_trainer import ConfidenceDPOTrainer

    plain = _trainer(tmp_path / "a", DPOTrainer, PAIRS)
    mine = _trainer(tmp_path / "b", ConfidenceDPOTrainer, PAIRS)
    rows = [mine.train_dataset[i] for i in range(2)]
    want = plain.compute_loss(plain.model, plain.data_collator([plain.train_dataset[i] for i in range(2)]))
    assert mine.compute_loss(mine.model, mine.data_collator(rows)).item() == pytest.approx(want.item(), rel=1e-5)
    eps = [0.1, 0.4]
    smooth = _trainer(tmp_path / "c", ConfidenceDPOTrainer, [{**p, "label_smoothing": e} for p, e in zip(PAIRS, eps)])
    batch = smooth.data_collator([smooth.train_dataset[i] for i in range(2)])
    got = smooth.compute_loss(smooth.model, batch).item()
    with torch.no_grad():  # DPO margins z_i recovered from the plain loss terms, then smoothed per pair
        ids, att, cm = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
        lp = [m(input_ids=ids, attention_mask=att).logits.double().log_softmax(-1) for m in
              (smooth.model, smooth.ref_model)]
        tok = ids[:, 1:]
        r = [(x[:, :-1].gather(-1, tok.unsqueeze(-1)).squeeze(-1) * cm[:, 1:]).sum(-1) for x in lp]
        ratio = r[0] - r[1]
    z = [0.5 * (ratio[i] - ratio[2 + i]).item() for i in range(2)]
    ref = [-(1 - e) * math.log(1 / (1 + math.exp(-zi))) - e * math.log(1 / (1 + math.exp(zi))) for zi, e in zip(z, eps)]
    assert got == pytest.approx(sum(ref) / 2, rel=1e-4)
    smooth.train()  # through the real data loader: the column survives
    logged = [h["label_smoothing"] for h in smooth.state.log_history if "label_smoothing" in h]
    assert logged and logged[0] == pytest.approx(sum(eps) / 2)
    with pytest.raises(ValueError, match="outside"):
        _trainer(tmp_path / "d", ConfidenceDPOTrainer, [{**PAIRS[0], "label_smoothing": 0.7}])
