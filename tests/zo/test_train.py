"""Plain loop, Hugging Face Trainer integration and PEFT-style parameter restriction on a tiny Llama."""

import pytest
import torch

from lmopt.zo import ZOSGD, RAdaZO, ZoAR, named_zo_parameters, zo_train

transformers = pytest.importorskip("transformers")


def tiny_llama(seed=0):
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=True, initializer_range=0.5)
    torch.manual_seed(seed)  # model init only; the ZO code never touches the global RNG
    return transformers.LlamaForCausalLM(cfg)


def batches(n=4, seed=1):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 64, (4, 12), generator=gen)
        ids[:, 1::2] = (ids[:, 0::2] + 1) % 64  # learnable pattern
        out.append({"input_ids": ids, "labels": ids.clone()})
    return out


def mean_loss(model, bs):
    with torch.no_grad():
        return float(sum(model(**b).loss for b in bs) / len(bs))


def test_plain_loop_decreases_loss_and_logs():
    model = tiny_llama()
    bs = batches()
    before = mean_loss(model, bs)
    opt = ZoAR(model.parameters(), lr=1e-3, mu=1e-2, q=2, history=2)
    hist = zo_train(model, opt, bs, steps=30, accumulation=2)
    assert mean_loss(model, bs) < before - 0.2
    assert len(hist) == 30 and hist[-1]["total_queries"] == 60
    assert {"loss", "projected_grads", "queries", "seconds"} <= set(hist[-1])
    assert model.training  # mode restored after the loop


def test_restricted_parameters_only_those_move():
    model = tiny_llama()
    named = named_zo_parameters(model, include=[r"layers\.1\.mlp\."])
    assert named and all("layers.1.mlp." in n for n, _ in named)
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = ZOSGD([p for _, p in named], lr=1e-2, mu=1e-3)
    zo_train(model, opt, batches(), steps=3)
    chosen = {n for n, _ in named}
    for n, p in model.named_parameters():
        assert torch.equal(p, snapshot[n]) != (n in chosen), n


def test_lora_adapters_via_peft():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    named = named_zo_parameters(model, lora=True)
    assert named and all("lora_" in n for n, _ in named)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    opt = RAdaZO([p for _, p in named], lr=1e-2)
    zo_train(model, opt, batches(), steps=3)
    for n, p in model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base[n])
    with pytest.raises(ValueError, match="LoRA"):
        named_zo_parameters(tiny_llama(), lora=True)


def test_zo_trainer_trains_with_accumulation(tmp_path):
    from lmopt.zo.train import ZOTrainer

    model = tiny_llama()
    bs = batches(8)
    rows = [{"input_ids": b["input_ids"][i], "labels": b["labels"][i]} for b in bs for i in range(4)]
    ds = [dict(r) for r in rows]
    before = mean_loss(model, bs)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4,
                                          gradient_accumulation_steps=2, learning_rate=1e-3, max_steps=30,
                                          logging_steps=10, report_to=[], save_strategy="no", seed=3,
                                          lr_scheduler_type="constant", use_cpu=True, weight_decay=0.0)
    trainer = ZOTrainer(model=model, args=args, train_dataset=ds, zo_optimizer="zoar",
                        zo_kwargs={"mu": 1e-2, "q": 2, "history": 2})
    trainer.train()
    assert trainer.zo_optimizer.zo_step == 30 and trainer.zo_optimizer.total_queries == 60
    assert mean_loss(model, bs) < before - 0.2
    logged = [h for h in trainer.state.log_history if "zo_projected_grad" in h]
    assert len(logged) == 3 and all(h["zo_queries"] > 0 for h in logged)
    assert all(abs(h["loss"]) < 20 for h in logged)
    with pytest.raises(ValueError, match="learning_rate"):
        ZOTrainer(model=model, args=args, train_dataset=ds, zo_kwargs={"lr": 1.0})


def test_zo_trainer_follows_the_learning_rate_schedule(tmp_path):
    from lmopt.zo.train import ZOTrainer

    model = tiny_llama()
    rows = [{"input_ids": b["input_ids"][i], "labels": b["labels"][i]} for b in batches(6) for i in range(4)]
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4,
                                          learning_rate=1e-3, max_steps=6, report_to=[], save_strategy="no",
                                          seed=3, lr_scheduler_type="linear", use_cpu=True, weight_decay=0.0)
    trainer = ZOTrainer(model=model, args=args, train_dataset=rows, zo_optimizer="zo-sgd", zo_kwargs={"mu": 1e-2})
    trainer.create_optimizer()
    used = []
    step = trainer.zo_optimizer.step

    def recording_step(closure):
        used.append(trainer.zo_optimizer.param_groups[0]["lr"])
        return step(closure)

    trainer.zo_optimizer.step = recording_step
    trainer.train()
    # linear decay without warm-up: step t (from 0) runs at lr * (T - t) / T
    assert used == pytest.approx([1e-3 * (6 - t) / 6 for t in range(6)])


def test_zo_trainer_distributes_under_torch_distributed(tmp_path):
    """zo_distribute=True (automatic when args.world_size > 1) puts the optimizer in data-parallel mode; a
    one-process gloo group stands in for torchrun here."""
    import torch.distributed as dist

    from lmopt.zo.train import ZOTrainer

    rows = [{"input_ids": b["input_ids"][i], "labels": b["labels"][i]} for b in batches(2) for i in range(4)]
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2,
                                          report_to=[], save_strategy="no", use_cpu=True)
    plain = ZOTrainer(model=tiny_llama(), args=args, train_dataset=rows)
    plain.create_optimizer()
    assert plain.zo_optimizer.estimator.reduce is None  # one process: nothing to reduce
    with pytest.raises(RuntimeError, match="torch.distributed initialised"):
        ZOTrainer(model=tiny_llama(), args=args, train_dataset=rows, zo_distribute=True).create_optimizer()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        forced = ZOTrainer(model=tiny_llama(), args=args, train_dataset=rows, zo_distribute=True)
        forced.create_optimizer()
        assert forced.zo_optimizer.estimator.reduce is not None
        forced.train()
        assert forced.zo_optimizer.zo_step == 2
    finally:
        dist.destroy_process_group()
