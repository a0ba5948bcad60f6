"""LLAMBO with the embedded SmolLM2-135M-Instruct on a tiny budget (real model)."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution as F
from optuna.distributions import IntDistribution as I

from lmopt.bo import LLAMBOSampler, TaskContext
from lmopt.lm import LM

pytestmark = pytest.mark.realmodel


def test_smollm2_proposes_valid_configurations_in_completion_format():
    from lmopt.lm import LocalLM

    space = {"n_estimators": I(10, 100), "learning_rate": F(1e-4, 10.0, log=True)}
    lm = LM(LocalLM(batch_size=16))
    ctx = TaskContext("AdaBoost", "accuracy", "classification", 105, 4, 0, 3)
    sampler = LLAMBOSampler(lm, ctx, space, n_initial=3, warm_start=False, n_candidates=4, n_surrogate_samples=3,
                            min_candidates=1, candidate_max_tokens=40, score_bounds=(0.0, 1.0),
                            prompt_format="completion", seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for params, value in (({"n_estimators": 20, "learning_rate": 0.01}, 0.70),
                          ({"n_estimators": 60, "learning_rate": 0.5}, 0.93),
                          ({"n_estimators": 90, "learning_rate": 5.0}, 0.41)):
        study.add_trial(optuna.trial.create_trial(params=params, distributions=space, value=value))
    trial = study.ask(space)
    study.tell(trial, 0.5)
    stats = study.trials[-1].system_attrs["llambo"]
    assert stats["phase"] == "llambo", stats
    assert stats["accepted"] >= 1 and stats["surrogate_parsed"] >= 1
    assert 10 <= trial.params["n_estimators"] <= 100 and 1e-4 <= trial.params["learning_rate"] <= 10
    assert stats["lm_calls"] == lm.usage()["optimizer"]["calls"] > 0
