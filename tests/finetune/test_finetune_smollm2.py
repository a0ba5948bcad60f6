"""PAFT and Flexora on the embedded SmolLM2 with a transformers Trainer (tiny budgets)."""

import pytest
import torch

from lmopt.finetune import FlexoraGates, PAFTCollator, PromptPool, PromptSampler, retrain_config
from lmopt.finetune.flexora import make_callback, trained_parameters
from lmopt.finetune.paft import make_epoch_callback

pytestmark = pytest.mark.realmodel

POOL = PromptPool(
    train=["Classify the sentiment of this tweet.\nTweet: {input}\nSentiment:",
           "Is the author negative, neutral or positive?\n{input}\nThe answer is"],
    held_out=["Text: {input}\nWhat mood does the text express?\nAnswer:"])


def test_paft_and_flexora_train_smollm2_with_a_trainer(tmp_path):
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from lmopt.assets import load_causal_lm
    from lmopt.data import load_task

    model, tok = load_causal_lm()
    task = load_task("tweets", per_class=4)
    feats = [{"input": e.input, "target": e.target, "index": i} for i, e in enumerate(task.examples[:8])]
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                             layers_to_transform=[26, 27, 28, 29], layers_pattern="layers")
    pm = peft.get_peft_model(model, config)
    full_lora = trained_parameters(pm)
    gates = FlexoraGates(pm)
    assert gates.layers == [26, 27, 28, 29]
    collator = PAFTCollator(tok, PromptSampler(POOL.train, seed=0), max_length=96)
    val = [collator(feats[6:8])]
    flexora = make_callback(gates, lambda b: pm(**b).loss, val, val_batches_per_step=1)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, num_train_epochs=2,
                                          learning_rate=1e-3, report_to=[], save_strategy="no", logging_steps=1,
                                          remove_unused_columns=False, use_cpu=True, disable_tqdm=True)
    trainer = transformers.Trainer(model=pm, args=args, train_dataset=feats[:4], data_collator=collator,
                                   callbacks=[make_epoch_callback(collator), flexora])
    trainer.train()
    assert collator.epoch == 1  # prompts were resampled for the second epoch
    assert len(flexora.history) == 4 and all(torch.isfinite(torch.tensor(v)) for v in flexora.val_losses)
    assert any(abs(a) > 1e-4 for a in flexora.history[-1])  # α moved
    selected = gates.selected_layers()
    assert set(selected) <= {26, 27, 28, 29}
    assert selected == [layer for layer, a in zip(gates.layers, flexora.history[-1]) if a > 0]
    if selected:
        gates.remove()
        again = peft.get_peft_model(load_causal_lm()[0], retrain_config(config, selected))
        assert trained_parameters(again) == full_lora * len(selected) // 4
