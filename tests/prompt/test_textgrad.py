"""TextGrad: the text computation graph, textual gradient descent and the released prompt-optimisation loop,
against scripted LMs."""

from __future__ import annotations

import hashlib

import pytest

from lmopt.lm import LM
from lmopt.prompt import TextGrad
from lmopt.prompt.textgrad import TextualGradientDescent
from lmopt.prompt.textual_graph import (
    FEEDBACK_SYSTEM,
    Variable,
    aggregate,
    backward,
    call_function,
    llm_call,
    topological_order,
)

from .conftest import ToyLM

SPLIT = {"seed": 0, "n_train": 30, "n_val": 12, "n_test": 20}


class Recorder:
    """An engine that answers from a script and records every request."""

    def __init__(self, reply=None):
        self.requests: list[tuple[str, str]] = []
        self.reply = reply or (lambda system, user, i: f"feedback {i}")

    def __call__(self, system: str, user: str) -> str:
        self.requests.append((system, user))
        return self.reply(system, user, len(self.requests))


def _role_of_request(user: str) -> str:
    return user.split("role is: ", 1)[1].split(".\n", 1)[0]


def test_backward_visits_a_two_step_pipeline_in_reverse_order_and_chains_feedback():
    sys_prompt = Variable("Solve the problem.", "system prompt of the solver")
    fmt = Variable("Answer with one number.", "formatting instruction")
    question = Variable("2 + 3?", "question", requires_grad=False)
    draft = llm_call(lambda s, u: "It is five.", "{q}", {"q": question}, system=sys_prompt, role="draft answer")
    final = llm_call(lambda s, u: "five", "{fmt}\n\n{draft}", {"fmt": fmt, "draft": draft}, role="final answer")
    loss = call_function(lambda answer: "0: the answer must be the digit 5", {"answer": final},
                         purpose="checks the final answer")
    order = topological_order(loss)
    assert order.index(question) < order.index(draft) < order.index(final) < order.index(loss)
    assert order.index(sys_prompt) < order.index(draft) and order.index(fmt) < order.index(final)
    eng = Recorder()
    visited = backward(loss, eng)
    assert visited == [loss, final, draft]  # reverse topological order; the question has no operation
    roles = [_role_of_request(u) for _, u in eng.requests]
    # loss → final answer; final's call → its trainable inputs (fmt, draft); draft's call → the system prompt
    assert roles == ["final answer", "formatting instruction", "draft answer", "system prompt of the solver"]
    assert all(s == FEEDBACK_SYSTEM for s, _ in eng.requests)
    # each request carries the feedback its output received downstream
    assert "feedback 1" in eng.requests[1][1] and "feedback 1" in eng.requests[2][1]
    assert "feedback 3" in eng.requests[3][1]
    # the loss itself is the objective: its request has no downstream feedback
    assert "OUTPUT_FEEDBACK" not in eng.requests[0][1]
    assert not question.gradients and [g.text for g in sys_prompt.gradients] == ["feedback 4"]
    assert "It is five." in sys_prompt.gradients[0].context  # the conversation the feedback is about


def test_aggregate_makes_each_loss_its_own_objective():
    p = Variable("Answer.", "prompt")
    losses = [call_function(lambda a, i=i: f"score {i}", {"a": llm_call(lambda s, u: "x", "{p}", {"p": p})},
                            purpose="scores") for i in range(3)]
    eng = Recorder()
    backward(aggregate(losses), eng)
    assert len(eng.requests) == 6  # per loss: feedback on the response, then on the prompt
    assert len(p.gradients) == 3
    assert sum("OUTPUT_FEEDBACK" not in u for _, u in eng.requests) == 3  # the three loss-level requests


def test_graph_rejects_bad_input():
    with pytest.raises(ValueError, match="role"):
        Variable("x", "")
    with pytest.raises(TypeError, match="str"):
        Variable(3, "number")
    with pytest.raises(ValueError, match="names"):
        llm_call(lambda s, u: "", "{missing}", {"q": Variable("a", "q")})
    with pytest.raises(ValueError, match="trainable"):
        TextualGradientDescent([Variable("a", "q", requires_grad=False)], lambda s, u: "")


def _update_engine(replies):
    it = iter(replies)
    return Recorder(lambda system, user, i: next(it))


def test_tgd_updates_between_tags_and_keeps_the_value_when_unparsed():
    v = Variable("old prompt", "prompt")
    v.gradients = []
    eng = _update_engine(["no tags here", "still none"])
    opt = TextualGradientDescent([v], eng)
    assert opt.step()[0].reason == "no_feedback" and not eng.requests  # nothing to do without feedback
    from lmopt.prompt.textual_graph import Feedback
    v.gradients = [Feedback("be precise", "ctx")]
    out = opt.step()[0]
    assert out.reason == "unparsed" and v.value == "old prompt" and len(eng.requests) == 2  # one retry
    eng2 = _update_engine(["Here: <IMPROVED_VARIABLE>new prompt</IMPROVED_VARIABLE>"])
    opt2 = TextualGradientDescent([v], eng2)
    assert opt2.step()[0].reason == "updated" and v.value == "new prompt"
    v.value, v.gradients = "p", [Feedback("f", "c")]
    eng3 = _update_engine([f"<IMPROVED_VARIABLE>{'w ' * 200}</IMPROVED_VARIABLE>"])
    assert TextualGradientDescent([v], eng3, max_value_chars=100).step()[0].reason == "too_long"
    assert v.value == "p"


def test_tgd_momentum_and_gradient_memory_reach_the_update_prompt():
    from lmopt.prompt.textual_graph import Feedback
    v = Variable("value 0", "prompt")
    replies = iter(f"<IMPROVED_VARIABLE>value {i}</IMPROVED_VARIABLE>" for i in range(1, 10))
    eng = Recorder(lambda s, u, i: next(replies))
    opt = TextualGradientDescent([v], eng, momentum_window=2, gradient_memory=1)
    for k in range(4):
        v.gradients = [Feedback(f"fb{k}", "ctx")]
        opt.step()
    assert v.value == "value 4"
    last = eng.requests[-1][1]
    # as released, the window ends with the current value (value 3), oldest first; memory: the previous feedback
    assert "Step 1: value 2\nStep 2: value 3\n" in last and "value 1" not in last
    assert "<PAST_FEEDBACK-1>fb2</PAST_FEEDBACK-1>" in last and "fb1" not in last
    first = eng.requests[0][1]
    assert "Step 1: value 0" in first and "PAST_FEEDBACK" not in first
    plain = TextualGradientDescent([Variable("value 0", "prompt")], Recorder(lambda s, u, i: "<IMPROVED_VARIABLE>"
                                                                             "value 1</IMPROVED_VARIABLE>"))
    plain.parameters[0].gradients = [Feedback("fb", "ctx")]
    plain.step()
    assert "PAST_VALUES" not in plain.engine.requests[0][1]


def test_tgd_summarises_feedback_above_the_cap():
    from lmopt.prompt.textual_graph import Feedback
    v = Variable("v", "prompt")
    v.gradients = [Feedback("x" * 900, "c" * 900) for _ in range(6)]
    eng = Recorder(lambda s, u, i: "short summary" if i == 1 else "<IMPROVED_VARIABLE>new value</IMPROVED_VARIABLE>")
    out = TextualGradientDescent([v], eng, max_total_chars=2000).step()[0]
    assert out.summarized and "short summary" in eng.requests[1][1]
    assert out.feedback_chars < 2100 and out.update_prompt_chars < 3000
    v.gradients = [Feedback("x" * 900, "c" * 900) for _ in range(6)]
    eng2 = Recorder(lambda s, u, i: "<IMPROVED_VARIABLE>new value</IMPROVED_VARIABLE>")
    out2 = TextualGradientDescent([v], eng2, max_total_chars=2000, summarize=False).step()[0]
    assert not out2.summarized and len(eng2.requests) == 1 and out2.feedback_chars <= 2000


class TextGradToy(ToyLM):
    """The toy task model; feedback says to answer carefully; updates propose variants, some with
    "carefully" (which raises the toy accuracy), so that some updates are kept and some reverted."""

    def __init__(self, task):
        super().__init__(task)
        self.updated: list[str] = []  # the variable's value shown in each update request

    def respond(self, prompt, config, j):
        self._maybe_interrupt()
        if FEEDBACK_SYSTEM[:40] in prompt:
            return "The instruction should ask to answer carefully."
        if "IMPROVED_VARIABLE>" in prompt:
            self.updated.append(prompt.split("<VARIABLE>", 1)[1].split("</VARIABLE>", 1)[0])
            v = int(hashlib.sha256(prompt.encode()).hexdigest()[:6], 16) % 1000
            word = "carefully " if v % 2 else ""
            return f"<IMPROVED_VARIABLE>Decide {word}yes or no ({v}).</IMPROVED_VARIABLE>"
        return super().respond(prompt, config, j)


def test_textgrad_follows_the_released_revert_rule(toy_task):
    toy = TextGradToy(toy_task)
    res = TextGrad().run(toy_task, LM(toy.backend), budget=12, split=SPLIT, seed=2)
    assert res.usage["judge"]["calls"] > 0 and res.usage["optimizer"]["calls"] > 0
    # replay the rule on the logged scores: a new prompt replaces the kept one unless strictly worse, and
    # every minibatch is answered under the prompt kept at that time
    kept = res.seed_prompt.instruction
    kept_score = res.seed_val_score
    decisions, ties, batches = [], 0, []
    for h in res.history:
        if h["kind"] == "batch":
            assert h["prompt"]["instruction"] == kept
            batches.append(kept)
        elif h["kind"] == "textgrad_validate":
            assert h["kept_score"] == kept_score
            decisions.append(h["accepted"])
            ties += h["val_score"] == kept_score
            assert h["accepted"] == (h["val_score"] >= kept_score)
            if h["accepted"]:
                kept, kept_score = h["candidate"], h["val_score"]
    assert True in decisions and False in decisions, "the scripted run should keep some updates, reject some"
    assert ties, "the scripted run should produce a tie (kept, as released)"
    # the update prompt rewrites the kept prompt (after a revert, the variable holds the kept value again)
    assert toy.updated == batches
    assert res.val_score == max(h["val_score"] for h in res.history if h["kind"] == "eval")


def test_textgrad_feedback_structure_and_budget(toy_task):
    toy = TextGradToy(toy_task)
    res = TextGrad(steps_per_epoch=2, epochs=1).run(toy_task, LM(toy.backend), budget=50, split=SPLIT, seed=0)
    batches = [h for h in res.history if h["kind"] == "batch"]
    assert [b["n_examples"] for b in batches] == [3, 3]
    # per step: 2 feedback calls per example (on the answer, then on the prompt) and one update (+ retry none)
    assert res.usage["judge"]["calls"] <= 2 * 3 * 2 and res.usage["judge"]["calls"] >= 2 * 3
    assert res.usage["optimizer"]["calls"] == 2
    # budget: 1 seed evaluation + 2 validations + 6 batch examples (6/12 of an evaluation, rounded down)
    assert res.n_evaluations == 1 + 2 + 0
    res_small = TextGrad().run(toy_task, LM(TextGradToy(toy_task).backend), budget=3, split=SPLIT, seed=0)
    assert res_small.n_evaluations <= 3 and "budget" in res_small.stop_reason


def test_textgrad_resume_after_interruption_matches_an_uninterrupted_run(toy_task, tmp_path):
    full = TextGrad(steps_per_epoch=3, epochs=1).run(toy_task, LM(TextGradToy(toy_task).backend), budget=20,
                                                    split=SPLIT, seed=1)
    toy = TextGradToy(toy_task)
    toy.fail_after = 25
    with pytest.raises(KeyboardInterrupt):
        TextGrad(steps_per_epoch=3, epochs=1).run(toy_task, LM(toy.backend), budget=20, split=SPLIT, seed=1,
                                                  checkpoint_dir=tmp_path)
    toy.fail_after = None
    resumed = TextGrad(steps_per_epoch=3, epochs=1).run(toy_task, LM(toy.backend), budget=20, split=SPLIT,
                                                       seed=1, checkpoint_dir=tmp_path)
    assert resumed.best_prompt == full.best_prompt and resumed.val_score == full.val_score
    assert [h["kind"] for h in resumed.history] == [h["kind"] for h in full.history]


def test_textgrad_prompt_length_is_bounded(toy_task):
    class Grower(TextGradToy):
        def respond(self, prompt, config, j):
            if "IMPROVED_VARIABLE>" in prompt and FEEDBACK_SYSTEM[:40] not in prompt:
                cur = prompt.split("<VARIABLE>", 1)[1].split("</VARIABLE>", 1)[0]
                return f"<IMPROVED_VARIABLE>{cur} Also be careful.</IMPROVED_VARIABLE>"
            return super().respond(prompt, config, j)

    res = TextGrad(max_value_chars=120, validate=False).run(toy_task, LM(Grower(toy_task).backend), budget=40,
                                                            split=SPLIT, seed=0)
    lengths = [h["prompt_chars"] for h in res.history if h["kind"] == "textgrad_step"]
    assert max(lengths) <= 120 and any(h["kind"] == "textgrad_rejected" for h in res.history)


def test_textgrad_rejects_bad_options():
    with pytest.raises(ValueError, match="batch_size"):
        TextGrad(batch_size=0)
    with pytest.raises(ValueError, match="momentum_window"):
        TextGrad(momentum_window=-1)
