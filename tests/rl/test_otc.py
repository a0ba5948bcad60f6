"""OTC's tool reward against the paper's cases, the safe calculator, and the calculator rollout inside TRL."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from lmopt.rl.calc import CalcError, calc_correct, calc_task, count_calls, safe_eval, tool_result
from lmopt.rl.otc import OTCReward, otc_ppo_tool_reward, otc_tool_reward
from lmopt.rl.tool_rollout import CalcToolRollout


@pytest.mark.parametrize("m,n,want", [
    (0, 0, 1.0),                                  # no tool needed, none used
    (2, 2, 1.0),                                  # the optimal number of calls
    (0, 2, 0.0),                                  # f = 0: too few calls earn nothing
    (1, 2, math.sin(math.pi / 3)),                # f = 4/3
    (4, 2, math.sin(2 * math.pi / 3)),            # f = 8/3: as far above n as 1 is below it
    (1, 0, math.cos(math.pi / 3)),                # n = 0: the cosine form, c = 1
    (3, 1, math.sin(3 * math.pi / 4)),            # f = 1.5
])
def test_otc_grpo_tool_reward_matches_the_papers_cases(m, n, want):
    assert otc_tool_reward(m, n, c=1.0) == pytest.approx(want, abs=1e-12)


def test_otc_ppo_form_and_shape():
    assert otc_ppo_tool_reward(0) == 1.0
    assert otc_ppo_tool_reward(2, c=1.0) == pytest.approx(math.cos(2 * math.pi / 5))
    vals = [otc_ppo_tool_reward(m, c=2.0) for m in range(8)]
    assert all(a > b for a, b in zip(vals, vals[1:])) and vals[-1] > 0  # falls with every call, stays positive
    assert otc_tool_reward(3, None) == otc_ppo_tool_reward(3)
    up = [otc_tool_reward(m, 3) for m in range(3, 12)]
    assert all(a > b for a, b in zip(up, up[1:]))  # beyond n, every extra call costs
    with pytest.raises(ValueError, match="number of tool calls"):
        otc_tool_reward(-1, 2)


def _rows(calls, correct):
    return [("<calc>1+1</calc>" * k) + (" Answer: 2" if ok else " Answer: 3") for k, ok in zip(calls, correct)]


def _right(prompts, completions, **kw):
    return [1.0 if c.endswith("Answer: 2") else 0.0 for c in completions]


def test_otc_reward_takes_n_from_the_correct_completions_of_each_group():
    r = OTCReward(_right, num_generations=4, alpha=1.0)
    prompts = ["q1"] * 4 + ["q2"] * 4
    comps = _rows([0, 1, 2, 3], [0, 1, 1, 0]) + _rows([2, 2, 3, 0], [1, 1, 1, 0])
    out = r(prompts, comps)
    assert r.last["n"] == [1, 2]
    want = [0.0, 1.0, math.sin(2 * math.pi / 3), 0.0, 1.0, 1.0, math.sin(2.4 * math.pi / 4), 0.0]
    assert out == pytest.approx(want)
    assert r.history[-1]["tool_productivity"] == pytest.approx(5 / 13)
    assert OTCReward(_right, num_generations=4, alpha=0.5)(prompts, comps) == pytest.approx([0.5 * w for w in want])
    ppo = OTCReward(_right, num_generations=4, mode="ppo")(prompts, comps)
    assert ppo[1] == pytest.approx(math.cos(math.pi / 3))
    with pytest.raises(ValueError, match="do not share one prompt"):
        r(["q1", "q2"] * 4, comps)
    with pytest.raises(ValueError, match="groups of num_generations=3"):
        OTCReward(_right, num_generations=3)(prompts, comps)


def test_remember_minimum_keeps_the_fewest_calls_seen_per_prompt():
    r = OTCReward(_right, num_generations=2, remember_minimum=True)
    r(["q"] * 2, _rows([1, 3], [1, 1]))
    out = r(["q"] * 2, _rows([2, 3], [1, 1]))  # this group's minimum is 2, but 1 solved it before
    assert r.last["n"] == [1] and out[0] == pytest.approx(math.sin(4 / 3 * math.pi / 2))
    plain = OTCReward(_right, num_generations=2)
    plain(["q"] * 2, _rows([1, 3], [1, 1]))
    assert plain(["q"] * 2, _rows([2, 3], [1, 1]))[0] == pytest.approx(1.0)


def test_the_calculator_evaluates_arithmetic_only():
    assert safe_eval("347 * 29 + 118") == 10181 and safe_eval("7 // 2") == 3 and safe_eval("2 ** 10") == 1024
    for bad, why in [("__import__('os').system('x')", "unsupported"), ("1/0", "division by zero"),
                     ("9**9**9", "exponent"), ("10**14 * 10**14", "magnitude"), ("(-8) ** 0.5", "real"),
                     ("x + 1", "unsupported"), ("", "empty"), ("1" * 300, "longer"), ("2 +", "not an arithmetic")]:
        with pytest.raises(CalcError, match=why):
            safe_eval(bad)
    assert tool_result("2*3") == "<result>6</result>" and tool_result("1/4") == "<result>0.25</result>"
    assert tool_result("1/0").startswith("<result>error: division by zero")


def test_calc_task_and_correctness():
    rows = calc_task(40, seed=3)
    assert rows == calc_task(40, seed=3) and rows != calc_task(40, seed=4)
    assert 10 <= sum(r["hard"] for r in rows) <= 30
    for r in rows:
        expr = r["prompt"][0]["content"].rsplit("What is ", 1)[1].rstrip("?")
        assert str(safe_eval(expr)) == r["answer"]
    got = calc_correct([None] * 3, ["<calc>2*3</calc><result>6</result> Answer: 6", "<result>6</result> so 5",
                                    [{"role": "assistant", "content": "Answer: 6"}]], ["6", "6", "6"])
    assert got == [1.0, 0.0, 1.0]  # the tool's number is not the model's answer
    assert count_calls("<calc>1</calc> x <calc>2</calc> <calc>open") == 2


class _ScriptedModel(torch.nn.Module):
    """Generates scripted texts, one per round, whatever the input (padding rows after a stop string)."""

    def __init__(self, tok, rounds):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.tok, self.rounds, self.seen = tok, list(rounds), []

    def generate(self, input_ids, attention_mask, max_new_tokens, **kw):
        assert kw["stop_strings"] == ["</calc>"]
        self.seen.append(input_ids.clone())
        text = self.rounds.pop(0)
        new = self.tok(text, add_special_tokens=False).input_ids + [self.tok.eos_token_id] * 3
        return torch.cat([input_ids, torch.tensor([new[:max_new_tokens]] * input_ids.shape[0])], dim=1)


def test_calc_rollout_appends_results_masked_from_the_loss():
    from transformers import AutoTokenizer

    from lmopt.assets import smollm2_dir

    tok = AutoTokenizer.from_pretrained(str(smollm2_dir()))
    model = _ScriptedModel(tok, ["First <calc>347*29+118</calc> trailing words", "Answer: 10181"])
    trainer = SimpleNamespace(processing_class=tok, model=model, eos_token_ids=[tok.eos_token_id],
                              accelerator=SimpleNamespace(unwrap_model=lambda m: m),
                              args=SimpleNamespace(max_completion_length=64, temperature=1.0, top_p=1.0, top_k=0))
    out = CalcToolRollout(max_calls=2)([[{"role": "user", "content": "What is 347*29+118?"}]], trainer)
    ids, mask = out["completion_ids"][0], out["env_mask"][0]
    text = tok.decode(ids, skip_special_tokens=True)
    assert text.startswith("First <calc>347*29+118</calc><result>10181</result>Answer: 10181")
    assert "trailing" not in text  # the segment is cut where the call closes
    result_ids = tok("<result>10181</result>", add_special_tokens=False).input_ids
    start = [k for k in range(len(ids)) if ids[k: k + len(result_ids)] == result_ids][0]
    assert mask[start: start + len(result_ids)] == [0] * len(result_ids)
    assert sum(mask) == len(ids) - len(result_ids) and ids[-1] == tok.eos_token_id
    # the second round continued from prompt + first segment + result
    assert model.seen[1].shape[1] == len(out["prompt_ids"][0]) + start + len(result_ids)
    assert out["logprobs"] is None


def test_otc_reward_and_calc_rollout_in_a_real_grpo_step(tmp_path):
    pytest.importorskip("trl")
    from datasets import Dataset
    from test_trl import tiny_model  # tests/rl is on sys.path (no package): pytest's default import mode
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from lmopt.assets import smollm2_dir

    tok = AutoTokenizer.from_pretrained(str(smollm2_dir()))
    rollout = CalcToolRollout(max_calls=2)
    reward = OTCReward(calc_correct, num_generations=4)
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=12, max_steps=1, logging_steps=1, report_to="none", save_strategy="no",
                      seed=0, bf16=False, dataloader_num_workers=0, gradient_checkpointing=False)
    trainer = GRPOTrainer(model=tiny_model(tok), reward_funcs=[reward], args=args, processing_class=tok,
                          train_dataset=Dataset.from_list(calc_task(4, seed=0)), rollout_func=rollout)
    trainer.train()
    assert len(rollout.calls) == 8 and len(reward.last["calls"]) == 8
    assert len(reward.last["n"]) == 2  # two prompts, four completions each, grouped as TRL passes them
    assert any("rewards/otc_grpo/mean" in h for h in trainer.state.log_history)


def test_tool_generate_ends_at_a_stop_string_and_forwards_logits_processors():
    from transformers import AutoTokenizer

    from lmopt.assets import smollm2_dir
    from lmopt.rl.calc import FEWSHOT_STOP
    from lmopt.rl.tool_rollout import tool_generate

    tok = AutoTokenizer.from_pretrained(str(smollm2_dir()))
    marker = object()

    class Model(_ScriptedModel):
        def generate(self, input_ids, attention_mask, max_new_tokens, **kw):
            assert kw["stop_strings"] == ["</calc>", FEWSHOT_STOP] and list(kw["logits_processor"]) == [marker]
            kw["stop_strings"] = ["</calc>"]
            return super().generate(input_ids, attention_mask, max_new_tokens, **kw)

    model = Model(tok, [" <calc>2*3</calc>", " Answer: 6\nQ: What is 9 + 9?\nA: <calc>9+9</calc>"])
    row = calc_task(1, seed=0, style="completion")[0]
    assert isinstance(row["prompt"], str) and row["prompt"].endswith("?\nA:")
    out = tool_generate(model, tok, [row["prompt"]], max_new_tokens=64, stop=[FEWSHOT_STOP],
                        logits_processor=[marker], do_sample=False)
    text = tok.decode(out["completion_ids"][0], skip_special_tokens=True)
    assert text == " <calc>2*3</calc><result>6</result> Answer: 6\nQ:"  # ends at the stop, no second call
    assert out["calls"] == [1] and len(model.rounds) == 0
    with pytest.raises(ValueError, match="stop"):
        tool_generate(model, tok, ["x"], max_new_tokens=4, stop="\nQ:")
