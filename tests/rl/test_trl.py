"""TRL integration: the wrappers and GRPOTrainer subclasses inside real (tiny) GRPO runs on CPU."""

import pytest
import torch

from lmopt.rl.advantages import copo_advantages, grpo_advantages
from lmopt.rl.answers import final_answer

pytest.importorskip("trl")
reasoning_gym = pytest.importorskip("reasoning_gym")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from lmopt.assets import smollm2_dir

    return AutoTokenizer.from_pretrained(str(smollm2_dir()))


@pytest.fixture(scope="module")
def gym_dataset():
    from datasets import Dataset

    gym = reasoning_gym.create_dataset("basic_arithmetic", size=8, seed=0)
    return gym, Dataset.from_list([{"prompt": e["question"], "answer": e["answer"]} for e in gym])


def tiny_model(tok, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)  # transformers initialises weights from the global RNG; tests only
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg)


def grpo_args(tmp_path, steps=2, **kw):
    from trl import GRPOConfig

    base = dict(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=8, num_generations=4,
                max_completion_length=6, max_steps=steps, logging_steps=1, report_to="none", save_strategy="no",
                seed=0, bf16=False, dataloader_num_workers=0, temperature=1.0,
                gradient_checkpointing=False)
    base.update(kw)
    return GRPOConfig(**base)


def parity(prompts, completions, **kw):
    """A reward with variance even for a random model: parity of the completion's character count."""
    return [float(len(c) % 2) for c in completions]


def short(prompts, completions, **kw):
    return [1.0 - min(len(c), 30) / 30 for c in completions]


def test_redit_zero_noise_equals_trl_and_logs(tmp_path, tokenizer, gym_dataset):
    from trl import GRPOTrainer

    from lmopt.rl import ReDitReward

    _, ds = gym_dataset
    off = ReDitReward(parity, m=0.0)
    on = ReDitReward(short, m=0.05, schedule="reverse_exp")
    tr = GRPOTrainer(model=tiny_model(tokenizer), reward_funcs=[off, on], args=grpo_args(tmp_path),
                     train_dataset=ds, processing_class=tokenizer)
    tr.train()
    rewards = torch.tensor([list(tr._logs["rewards"]["parity"]), list(tr._logs["rewards"]["short"])]).T
    # the m=0 column is exactly the undithered reward
    texts = list(tr._logs["completion"])
    assert rewards[:, 0].tolist() == parity(None, texts)
    assert not torch.allclose(rewards[:, 1], torch.tensor(short(None, texts)))
    expected = grpo_advantages(rewards, 4, tr.reward_weights, tr.scale_rewards)
    torch.testing.assert_close(torch.tensor(list(tr._logs["advantages"])), expected, atol=1e-5, rtol=1e-5)
    logs = [h for h in tr.state.log_history if "redit/short/noise_scale" in h]
    assert len(logs) == 2
    assert logs[0]["redit/short/noise_scale"] == pytest.approx(0.05 * 0.99**2, rel=1e-4)  # reverse: m(T - t), T=2
    assert logs[0]["redit/parity/noise_scale"] == 0.0


def test_copo_trainer_uses_copo_advantages(tmp_path, tokenizer, gym_dataset):
    from lmopt.rl import COPOGRPOTrainer

    class Recording(COPOGRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            self.seen = out["advantages"].clone()
            return out

    _, ds = gym_dataset
    tr = Recording(model=tiny_model(tokenizer), reward_funcs=[parity], args=grpo_args(tmp_path, steps=1),
                   train_dataset=ds, processing_class=tokenizer)
    tr.train()
    rewards = torch.tensor(list(tr._logs["rewards"]["parity"]))
    answers = [final_answer(c) for c in tr._logs["completion"]]
    expected = copo_advantages(rewards, answers, 4)  # the released settings are the trainer's default
    torch.testing.assert_close(tr.seen, expected, atol=1e-5, rtol=1e-5)
    trl_local = torch.tensor(list(tr._logs["advantages"]))  # TRL logs its own local advantages
    torch.testing.assert_close(trl_local, grpo_advantages(rewards, 4), atol=1e-5, rtol=1e-5)
    assert "copo/weight_local" in tr.state.log_history[0]


def test_copo_trainer_refuses_a_batch_of_one_group(tmp_path, tokenizer, gym_dataset):
    from lmopt.rl import COPOGRPOTrainer

    _, ds = gym_dataset
    with pytest.raises(ValueError, match="1 prompt group per batch"):
        COPOGRPOTrainer(model=tiny_model(tokenizer), reward_funcs=[parity],
                        args=grpo_args(tmp_path, per_device_train_batch_size=4), train_dataset=ds,
                        processing_class=tokenizer)


def test_mopps_trainer_updates_posterior(tmp_path, tokenizer, gym_dataset):
    from lmopt.rl import MoPPS, MoPPSGRPOTrainer

    _, ds = gym_dataset
    seen, events = [], []

    class Recorded(MoPPS):
        def select(self, batch_size):
            events.append("select")
            return super().select(batch_size)

        def update(self, indices, success_rates, n):
            events.append("update")
            return super().update(indices, success_rates, n)

    def parity_recorded(prompts, completions, lmopt_prompt_index, **kw):
        out = parity(prompts, completions)
        seen.extend(zip(lmopt_prompt_index, prompts, out))
        return out

    tr = MoPPSGRPOTrainer(model=tiny_model(tokenizer), reward_funcs=[parity_recorded],
                          args=grpo_args(tmp_path, steps=3), train_dataset=ds, processing_class=tokenizer,
                          mopps=Recorded(len(ds), lam=0.5, seed=0))
    tr.train()
    # each batch is chosen after the previous batch's rewards reached the posterior (no one-batch lag)
    assert events == ["select", "update"] * 3
    replay = MoPPS(len(ds), lam=0.5, seed=0)
    for g in range(0, len(seen), 4):
        if g % 8 == 0:  # two prompts per generation batch: replay the selection the trainer made
            assert replay.select(2) == [seen[g][0], seen[g + 4][0]]
        group = seen[g:g + 4]
        assert len({(i, p) for i, p, _ in group}) == 1  # RepeatSampler layout: groups of num_generations
        assert ds["prompt"][group[0][0]] == group[0][1]  # the index column points at the prompt
        replay.update([group[0][0]], [sum(r for *_, r in group) / 4], 4)
    assert len(seen) == 24
    assert tr.mopps.alpha.tolist() == pytest.approx(replay.alpha.tolist())
    assert tr.mopps.beta.tolist() == pytest.approx(replay.beta.tolist())
    with pytest.raises(ValueError, match="not a reward function name"):
        MoPPSGRPOTrainer(model=tiny_model(tokenizer), reward_funcs=[parity], args=grpo_args(tmp_path),
                         train_dataset=ds, processing_class=tokenizer, success_reward="accuracy")


def test_dynamic_weighting_trainer_and_callback(tmp_path, tokenizer, gym_dataset):
    from lmopt.rl import GradientWeightingGRPOTrainer, HypervolumeWeightCallback

    _, ds = gym_dataset
    tr = GradientWeightingGRPOTrainer(model=tiny_model(tokenizer), reward_funcs=[parity, short],
                                      args=grpo_args(tmp_path, scale_rewards="none", learning_rate=1e-3),
                                      train_dataset=ds, processing_class=tokenizer)
    cb = HypervolumeWeightCallback.attach(tr)
    tr.train()
    logged = [h for h in tr.state.log_history if "weights/parity" in h]
    assert logged, "gradient weighting should log its weights"
    assert len(cb.history) == 2
    # both act: the gradient rule moved the simplex weights, the hypervolume factor scales them
    assert not torch.allclose(tr.objective_weights, torch.tensor([0.5, 0.5]))
    assert tr.weight_scale == cb.history[-1]["meta"]
    torch.testing.assert_close(tr.reward_weights, tr.objective_weights * cb.history[-1]["meta"])
    assert float(tr.objective_weights.sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least two reward functions"):
        GradientWeightingGRPOTrainer(model=tiny_model(tokenizer), reward_funcs=[parity],
                                     args=grpo_args(tmp_path), train_dataset=ds, processing_class=tokenizer)
    with pytest.raises(ValueError, match="matches no trainable parameter"):
        t = GradientWeightingGRPOTrainer(model=tiny_model(tokenizer), reward_funcs=[parity, short],
                                         args=grpo_args(tmp_path), train_dataset=ds, processing_class=tokenizer,
                                         weight_layers=[7])
        t._weight_params(t.model)


@pytest.mark.realmodel
def test_real_smollm2_grpo_smoke_with_redit(tmp_path, tokenizer):
    """Two GRPO steps of the embedded SmolLM2-135M-Instruct on a reasoning-gym task, with ReDit rewards."""
    from datasets import Dataset
    from trl import GRPOTrainer

    from lmopt.assets import smollm2_dir
    from lmopt.rl import ReDitReward

    gym = reasoning_gym.create_dataset("basic_arithmetic", size=4, seed=1)
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": e["question"] + " Answer with the number only."}],
                             "idx": i} for i, e in enumerate(gym)])

    def correct(prompts, completions, idx, **kw):
        return [float(gym.score_answer(c[-1]["content"].strip(), gym[i])) for c, i in zip(completions, idx)]

    reward = ReDitReward(correct, m=0.02, seed=0)
    tr = GRPOTrainer(model=str(smollm2_dir()), reward_funcs=[reward],
                     args=grpo_args(tmp_path, per_device_train_batch_size=4, num_generations=4,
                                    max_completion_length=8), train_dataset=ds, processing_class=tokenizer)
    before = next(tr.model.parameters()).detach().clone()
    tr.train()
    assert len(reward.history) == 2 and all(h["noise_scale"] == 0.02 for h in reward.history)
    assert all(torch.isfinite(torch.tensor(list(tr._logs["advantages"]))))
    # with dithering no group has exactly zero reward spread, so the step moves the weights
    assert tr.state.log_history[0]["frac_reward_zero_std"] == 0.0
    assert not torch.equal(before, next(tr.model.parameters()).detach())


def test_reward_model_function_in_ensemble(tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from lmopt.rl import EnsembleReward, RewardModelFunction

    torch.manual_seed(0)  # weight init of the tiny reward model; tests only
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    rm = RewardModelFunction(LlamaForSequenceClassification(cfg).eval(), tokenizer, batch_size=2, name="rm")
    prompts, completions = ["1+1=", "2+2=", "3+3="], ["2", "5", "6"]
    scores = rm(prompts=prompts, completions=completions)
    assert len(scores) == 3 and len(set(scores)) == 3
    # batching does not change the scores
    one_by_one = [rm(prompts=[p], completions=[c])[0] for p, c in zip(prompts, completions)]
    assert scores == pytest.approx(one_by_one, abs=1e-5)
    ens = EnsembleReward([rm, lambda prompts, completions, **k: [0.0, 0.0, 0.0]], mode="wco")
    assert ens(prompts=prompts, completions=completions) == pytest.approx([min(s, 0.0) for s in scores], abs=1e-6)


def test_documented_trl_features_exist(tmp_path):
    """docs/rl.md sends users to TRL for SimPO, f-DPO and GDPO normalisation: the configs must accept them
    (a config rejects an unknown option or value, so constructing them is the check; TRL's losses for these
    options are its own)."""
    from trl import DPOConfig, GRPOConfig

    try:
        from trl.experimental.cpo import CPOConfig
    except ImportError:  # TRL 0.x
        from trl import CPOConfig
    CPOConfig(output_dir=str(tmp_path), loss_type="simpo", cpo_alpha=0.0, simpo_gamma=0.5, beta=2.0, bf16=False,
              report_to="none")
    DPOConfig(output_dir=str(tmp_path), f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.5,
              bf16=False, report_to="none")
    GRPOConfig(output_dir=str(tmp_path), multi_objective_aggregation="normalize_then_sum", report_to="none",
               bf16=False)
