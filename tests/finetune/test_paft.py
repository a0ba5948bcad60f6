import numpy as np
import pytest

from lmopt.data.task import Example, Task
from lmopt.finetune import PAFTCollator, PromptPool, PromptSampler, build_prompt_pool, default_quality_check, render
from lmopt.lm import LM
from lmopt.lm.scripted import ScriptedBackend

TRAIN = [f"Prompt number {i}: classify the tweet.\nInput: {{input}}\nAnswer:" for i in range(5)]
HELD = [f"Held-out {i}: what is the sentiment?\n{{input}}\nThe answer is" for i in range(3)]


def test_sampling_is_seeded_and_covers_the_pool_every_epoch():
    s = PromptSampler(TRAIN, seed=3)
    a = [s.index(0, i) for i in range(50)]
    assert a == [PromptSampler(TRAIN, seed=3).index(0, i) for i in range(50)]
    assert a != [s.index(1, i) for i in range(50)]  # resampled every epoch
    assert a != [PromptSampler(TRAIN, seed=4).index(0, i) for i in range(50)]
    counts = np.bincount(a, minlength=5)
    assert counts.tolist() == [10] * 5  # 50 examples over 5 prompts: each prompt 10 times
    k = PromptSampler(TRAIN, seed=3, resample_every=4)
    blocks = [k.index(0, i) for i in range(20)]
    assert all(len(set(blocks[j:j + 4])) == 1 for j in range(0, 20, 4))


class CharTokenizer:
    pad_token_id, eos_token_id = 0, 1

    def encode(self, text, add_special_tokens=False):
        return [2 + (ord(c) % 200) for c in text]


def test_the_collator_never_uses_held_out_prompts_and_masks_the_prompt():
    pool = PromptPool(TRAIN, HELD)
    coll = PAFTCollator(CharTokenizer(), PromptSampler(pool.train, seed=0))
    seen = set()
    for epoch in range(4):
        coll.epoch = epoch
        feats = [{"input": f"tweet {i}", "target": "positive", "index": i} for i in range(30)]
        for prompt, _ in coll.texts(feats):
            assert not any(h.split("{input}")[0] in prompt for h in HELD)
            seen.add(prompt.split(":")[0])
    assert seen == {f"Prompt number {i}" for i in range(5)}
    batch = coll([{"input": "good day", "target": "positive", "index": 0}])
    labels = batch["labels"][0].tolist()
    answer = [t for t in labels if t != -100]
    assert answer == CharTokenizer().encode(" positive") + [1]
    n_prompt = len(render(coll.sampler.template(coll.epoch, 0), "good day"))
    assert labels[:n_prompt] == [-100] * n_prompt


def test_templates_need_exactly_one_input_field():
    with pytest.raises(ValueError, match="exactly once"):
        PromptPool(["no slot here"], HELD)
    with pytest.raises(ValueError, match="only the"):
        PromptPool(["{input} and {label}"], HELD)
    with pytest.raises(ValueError, match="no training prompt"):
        PromptPool([], HELD)
    with pytest.raises(ValueError, match="both training and held-out"):
        PromptPool(TRAIN, [TRAIN[0]])
    with pytest.raises(ValueError, match="at least one training prompt"):
        PromptSampler([])


def test_default_quality_check():
    assert default_quality_check("Decide whether the tweet is negative, neutral or positive.") is None
    assert "words" in default_quality_check("Classify.")
    assert "field" in default_quality_check("Classify the {text} as negative or positive please.")
    assert "answer" in default_quality_check("The sentiment of this tweet is positive", ["positive"])
    assert default_quality_check("Say whether the tweet is negative or positive.", ["positive"]) is None
    assert "off task" in default_quality_check("Try to be helpful in chat without this step.", ["positive"],
                                               keywords=["tweet", "sentiment"])


class WordEmbedder:
    """Bag-of-words unit vectors (a stand-in for MiniLM): identical wordings have cosine 1."""

    def encode(self, texts):
        out = []
        for t in texts:
            v = np.zeros(64)
            for w in t.lower().split():
                v[hash(w) % 64] += 1
            out.append(v / np.linalg.norm(v))
        return np.array(out)


def toy_task():
    exs = tuple(Example(f"tweet text {i}", ("negative", "positive")[i % 2]) for i in range(10))
    return Task(name="toy", examples=exs, labels=("negative", "positive"), instruction="Classify the tweet.",
                description="classify the sentiment of a tweet")


def scripted(replies):
    it = iter(replies)
    return LM(ScriptedBackend(lambda prompt, config, j: next(it)))


def test_build_prompt_pool_filters_dedups_and_splits(tmp_path):
    replies = ["Decide if the tweet sounds negative or positive.",
               "Decide if the tweet sounds negative or positive.",       # duplicate
               "Hi.",                                                     # too short
               "Try to be helpful in chat without this step.",                # off task
               "Read the tweet and tell me its overall mood, negative or positive.",
               "Instruction: Judge the emotional tone of this tweet carefully.",
               "Is the writer of this post positive or negative about the topic?",
               "Label the sentiment expressed by the author of the tweet below."]
    pool = build_prompt_pool(scripted(replies), toy_task(), n_train=3, n_held_out=2, embedder=WordEmbedder(),
                             max_similarity=0.95, seed=0)
    assert len(pool.train) == 3 and len(pool.held_out) == 2
    assert not set(pool.train) & set(pool.held_out)
    reasons = [r["reason"] for r in pool.rejected]
    assert any("near-duplicate" in r for r in reasons) and any("words" in r for r in reasons)
    assert any("off task" in r for r in reasons)
    assert all(p.count("{input}") == 1 for p in pool.train + pool.held_out)
    assert not any(p.startswith("Instruction:") for p in pool.train + pool.held_out)
    back = PromptPool.load(pool.save(tmp_path / "pool.json"))
    assert back.train == pool.train and back.held_out == pool.held_out and back.rejected == pool.rejected


def test_a_pool_too_small_for_the_split_is_a_clear_error():
    with pytest.raises(ValueError, match="only 1 prompts passed the checks after 3 generations, 4 are needed"):
        build_prompt_pool(scripted(["Decide if the tweet sounds negative or positive."] * 3), toy_task(), n_train=2,
                          n_held_out=2, embedder=WordEmbedder(), max_calls=3)
