"""Reward shaping for RL fine-tuning of language models, on top of TRL.

* :mod:`lmopt.rl.redit` — ReDit reward dithering (arXiv 2506.18631) as a wrapper of any TRL reward function.
* :mod:`lmopt.rl.ensemble` — reward-model ensembles: mean, WCO, UWO (arXiv 2310.02743).
* :mod:`lmopt.rl.weighting` — dynamic reward weighting: hypervolume-guided and gradient-based (arXiv 2509.11452).
* :mod:`lmopt.rl.mopps` — MoPPS Beta posteriors and Thompson-sampling prompt selection (arXiv 2507.04632).
* :mod:`lmopt.rl.advantages` — TRL's GRPO advantage formula and COPO's blend (arXiv 2508.04138).
* :mod:`lmopt.rl.answers` — final-answer extraction for COPO's answer entropy.
* :mod:`lmopt.rl.preference` — SimPO (arXiv 2405.14734) and f-DPO (arXiv 2309.16240) configured for TRL.
* :mod:`lmopt.rl.otc` — OTC's tool-call-aware reward (arXiv 2504.14870); :mod:`lmopt.rl.calc` its text
  calculator tool and task; :mod:`lmopt.rl.tool_rollout` a multi-turn calculator rollout for GRPOTrainer.
* :mod:`lmopt.rl.hapo` — HAPO's token-level entropy-driven GRPO maths (arXiv 2507.21848); the trainer is
  :class:`lmopt.rl.hapo_trainer.HAPOGRPOTrainer`.
* :mod:`lmopt.rl.sparsepo` — SparsePO's token masks and loss (arXiv 2410.05102); the trainer is
  :class:`lmopt.rl.sparsepo_trainer.SparsePOTrainer` (a DPOTrainer).
* :mod:`lmopt.rl.mcts_dpo` — MCTS-DPO's step-level tree search and preference pairs (arXiv 2405.00451); the
  per-pair smoothed loss is :class:`lmopt.rl.mcts_dpo_trainer.ConfidenceDPOTrainer`.
* :mod:`lmopt.rl.toy` — a pure-torch GRPO toy for seeded CPU experiments.
* :mod:`lmopt.rl.trainers` — GRPOTrainer subclasses and callbacks (imports TRL; exposed lazily here).
"""

from __future__ import annotations

from typing import Any

from lmopt.rl.advantages import (
    COPO_PRESETS,
    answer_entropy,
    copo_advantages,
    copo_settings,
    grpo_advantages,
    zero_variance_groups,
)
from lmopt.rl.answers import final_answer
from lmopt.rl.ensemble import EnsembleReward, RewardModelFunction, combine_rewards
from lmopt.rl.mcts_dpo import MCTS, MCTSConfig, mcts_preference_data
from lmopt.rl.mopps import MoPPS, MoPPSSampler, group_success_rates
from lmopt.rl.otc import OTCReward, otc_tool_reward
from lmopt.rl.preference import SIMPO_PRESETS, fdpo_config, fdpo_loss, self_preference_pairs, simpo_config, simpo_loss
from lmopt.rl.redit import ALL_SCHEDULES, ReDitReward, dither, noise_scale
from lmopt.rl.weighting import (
    HypervolumeWeighting,
    gradient_scores,
    gradient_weight_update,
    hypervolume,
    pareto_front,
)

_TRL_NAMES = ("COPOGRPOTrainer", "MoPPSGRPOTrainer", "GradientWeightingGRPOTrainer", "HypervolumeWeightCallback",
              "HAPOGRPOTrainer", "SparsePOTrainer", "ConfidenceDPOTrainer")
_TRL_MODULE = {"HAPOGRPOTrainer": "hapo_trainer", "SparsePOTrainer": "sparsepo_trainer",
               "ConfidenceDPOTrainer": "mcts_dpo_trainer"}

__all__ = [
    "ALL_SCHEDULES", "COPO_PRESETS", "MCTS", "MCTSConfig", "SIMPO_PRESETS", "EnsembleReward",
    "HypervolumeWeighting", "MoPPS",
    "MoPPSSampler", "OTCReward", "ReDitReward", "RewardModelFunction", "answer_entropy", "combine_rewards",
    "copo_advantages", "copo_settings", "dither", "fdpo_config", "fdpo_loss", "final_answer", "gradient_scores",
    "gradient_weight_update", "grpo_advantages", "group_success_rates", "hypervolume", "mcts_preference_data",
    "noise_scale", "otc_tool_reward", "pareto_front", "self_preference_pairs", "simpo_config", "simpo_loss",
    "zero_variance_groups", *_TRL_NAMES,
]


def __getattr__(name: str) -> Any:
    if name in _TRL_NAMES:
        import importlib

        return getattr(importlib.import_module(f"lmopt.rl.{_TRL_MODULE.get(name, 'trainers')}"), name)
    raise AttributeError(f"module 'lmopt.rl' has no attribute {name!r}")
