"""The embedded SmolLM2 through LocalLM: greedy answer, exact scores, seeded sampling, hidden states."""

import pytest
import torch

from lmopt.lm import LM, GenerationConfig

pytestmark = pytest.mark.realmodel


@pytest.fixture(scope="module")
def local():
    from lmopt.lm import LocalLM

    return LocalLM(batch_size=4)


def test_greedy_capital_of_france(local):
    out = LM(local).generate("The capital of France is", GenerationConfig(max_new_tokens=4))[0][0]
    assert "Paris" in out.text
    assert out.prompt_tokens == 5 and out.completion_tokens == 4 and out.finish_reason == "length"


def test_chat_template_answer(local):
    msg = [{"role": "user", "content": "What is the capital of France? Answer with one word."}]
    out = LM(local).chat(msg, GenerationConfig(max_new_tokens=12))[0][0]
    assert "Paris" in out.text and out.finish_reason == "stop"


def test_score_equals_manual_forward_pass(local):
    tok, model = local.tokenizer, local.model
    # The last four share a prompt with several multi-token continuations: one prompt pass, KV cache reused.
    prompts = ["The capital of France is", "Tweet: I love it\nSentiment:", "2 + 2 =", *["Q: Who is he?\nA:"] * 4]
    conts = [" Paris, a big city", " positive", " 4", " 10", " father-in-law", " son", " 7"]
    scores = local.score(prompts, conts)
    for p, c, s in zip(prompts, conts, scores):
        pi = tok(p, add_special_tokens=False).input_ids
        ci = tok(c, add_special_tokens=False).input_ids
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([pi + ci])).logits[0].float(), -1)
        manual = sum(logp[len(pi) + k - 1, t].item() for k, t in enumerate(ci))
        assert s.continuation_tokens == len(ci)
        assert s.logprob == pytest.approx(manual, abs=2e-3)


def _manual_logprob(model, pi, ci):
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([pi + ci])).logits[0].float(), -1)
    return sum(logp[len(pi) + k - 1, t].item() for k, t in enumerate(ci))


FEW_SHOT = ("Classify the sentiment of the tweet.\n\nTweet: I love my new car\nSentiment: positive\n\n"
            "Tweet: The bus was late again\nSentiment: negative\n\nTweet: {}\nSentiment:")


class _FedTokens:
    """Counts the input tokens the model is run on (the work prefix reuse saves)."""

    def __init__(self, model):
        self.n = 0
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.n += ids.numel()


def test_shared_prefix_is_computed_once_and_scores_equal_full_forward(local):
    tok, model = local.tokenizer, local.model
    inputs = ["Self-driving cars scare me", "A new lidar was announced today", "Best ride of my life!"]
    prompts = [FEW_SHOT.format(x) for x in inputs for _ in range(3)]
    conts = [" positive", " negative", " father-in-law"] * len(inputs)  # single- and multi-token labels
    enc = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    n_shared = next(i for i in range(len(enc[0])) if len({tuple(e[: i + 1]) for e in enc}) > 1)
    counter = _FedTokens(model)
    try:
        scores = local.score(prompts, conts)
    finally:
        counter.handle.remove()
    for pi, c, s in zip(enc, conts, scores):
        ci = tok(c, add_special_tokens=False).input_ids
        assert s.logprob == pytest.approx(_manual_logprob(model, pi, ci), abs=1e-4)
    # The shared prefix was fed once (not once per row): far fewer tokens than the full rows.
    full = sum(len(pi) for pi in enc[::3]) + sum(len(pi) + 2 for pi in enc[2::3])
    assert counter.n < full - 2 * n_shared
    local.prefix_reuse = False
    try:
        assert [s.logprob for s in local.score(prompts, conts)] == pytest.approx(
            [s.logprob for s in scores], abs=1e-4)
    finally:
        local.prefix_reuse = True


def test_generation_over_a_shared_prefix_equals_generation_in_full(local):
    prompts = [FEW_SHOT.format(x) for x in ("Self-driving cars scare me", "Best ride of my life!", "ok")]
    cfg = GenerationConfig(max_new_tokens=6)
    sampled = GenerationConfig(max_new_tokens=6, temperature=1.0, n=2, seed=3)
    reused = [o[0].text for o in local.generate(prompts, cfg)]
    reused_sampled = [c.text for c in local.generate(prompts, sampled)[1]]
    local.prefix_reuse = False
    try:
        full = [local.generate([p], cfg)[0][0].text for p in prompts]
        full_sampled = [c.text for c in local.generate(prompts[1:2], sampled)[0]]
    finally:
        local.prefix_reuse = True
    assert reused == full
    assert reused_sampled == full_sampled


def test_batched_greedy_matches_single_prompt(local):
    prompts = ["Once upon a time", "The capital of France is", "def add(a, b):"]
    cfg = GenerationConfig(max_new_tokens=6)
    batched = [o[0].text for o in local.generate(prompts, cfg)]
    single = [local.generate([p], cfg)[0][0].text for p in prompts]
    assert batched == single


def test_sampling_is_seeded_per_sample_and_independent_of_the_batch(local):
    cfg = GenerationConfig(max_new_tokens=6, temperature=1.0, n=2, seed=11)
    state = torch.random.get_rng_state()
    alone = [c.text for c in local.generate(["Once upon a time"], cfg)[0]]
    with_other = [c.text for c in local.generate(["Hello", "Once upon a time"], cfg)[1]]
    assert alone == with_other
    assert alone[0] != alone[1]
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG was not touched
    other_seed = [c.text for c in local.generate(["Once upon a time"], GenerationConfig(
        max_new_tokens=6, temperature=1.0, n=2, seed=12))[0]]
    assert other_seed != alone


def test_hidden_states_shape_and_errors(local):
    h = local.hidden_states(["a b c", "hello"], layer=-1, pool="last")
    assert h.shape == (2, local.model.config.hidden_size) and torch.isfinite(h).all()
    with pytest.raises(ValueError, match="pool must be"):
        local.hidden_states(["x"], pool="max")


def test_unknown_model_offline_gives_a_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants

    from lmopt.lm import LocalLM

    # the hub reads HF_HUB_OFFLINE at import time; patch the constant so no network retries happen
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(OSError, match="could not load model 'no-such-org/no-such-model'"):
        LocalLM("no-such-org/no-such-model")


def test_embedder_is_normalised_and_semantic():
    from lmopt.lm import Embedder

    e = Embedder()
    v = e.encode(["I love self-driving cars", "Autonomous vehicles are great", "The soup is cold"])
    assert v.shape == (3, 384)
    assert abs(float((v[0] ** 2).sum()) - 1) < 1e-4
    assert float(v[0] @ v[1]) > float(v[0] @ v[2])
    with pytest.raises(TypeError, match="list of strings"):
        e.encode("just one")


class _BosTokenizer:
    """The SmolLM2 tokenizer behaving like Gemma's / Llama's: a BOS in front of every text by default."""

    def __init__(self, tok):
        self._tok = tok
        self.bos_token_id = tok.bos_token_id

    def __call__(self, text, add_special_tokens=True, **kw):
        enc = self._tok(text, add_special_tokens=False, **kw)
        if add_special_tokens:
            enc["input_ids"] = [self.bos_token_id, *enc["input_ids"]]
        return enc

    def __getattr__(self, name):
        return getattr(self._tok, name)


def test_prompts_get_the_bos_a_tokenizer_adds_by_default(local):
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmopt.lm import LocalLM
    from lmopt.lm.local import bos_to_prepend, with_bos

    assert bos_to_prepend(local.tokenizer) is None  # SmolLM2 adds none: prompts unchanged
    tok = _BosTokenizer(local.tokenizer)
    assert bos_to_prepend(tok) == tok.bos_token_id
    assert with_bos([5, 6], 1) == [1, 5, 6] and with_bos([1, 5], 1) == [1, 5] and with_bos([5], None) == [5]
    torch.manual_seed(0)  # transformers initialises weights from the global RNG; tests only
    cfg = LlamaConfig(vocab_size=len(local.tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(cfg).eval()
    lm = LocalLM(model_obj=model, tokenizer=tok)
    p, c = "2 + 2 =", " 4 or 5"
    pi = local.tokenizer(p, add_special_tokens=False).input_ids
    ci = local.tokenizer(c, add_special_tokens=False).input_ids
    s = lm.score([p], [c])[0]
    assert s.logprob == pytest.approx(_manual_logprob(model, [tok.bos_token_id, *pi], ci), abs=1e-4)
    assert s.logprob != pytest.approx(_manual_logprob(model, pi, ci), abs=1e-4)
    out = lm.generate([p], GenerationConfig(max_new_tokens=2))[0][0]
    assert out.prompt_tokens == len(pi) + 1
