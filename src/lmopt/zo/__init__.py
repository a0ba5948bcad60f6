"""Zeroth-order optimisation: gradient estimates from function values only.

* :mod:`~lmopt.zo.directions` — seeded directions (Gaussian / unit sphere) from a device-local generator;
* :mod:`~lmopt.zo.perturb` — in-place, chunked perturbation with bit-exact restore;
* :mod:`~lmopt.zo.estimator` — the estimator core (q directions, one/two-sided, ``f(x)`` or averaged
  baseline, query reuse in seed space);
* :mod:`~lmopt.zo.rules` and :mod:`~lmopt.zo.optimizers` — ZO-SGD (MeZO), ZO-SGD with momentum,
  ZO-signSGD, ZO-AdaMM, R-AdaZO and ZoAR with a ``torch.optim`` API (``step(closure)``);
* :mod:`~lmopt.zo.select` — which parameters to perturb (named modules, LoRA adapters);
* :mod:`~lmopt.zo.train` — a plain training loop and a Hugging Face ``Trainer`` (``ZOTrainer``).
"""

from .directions import DirectionSampler, mix_seed
from .estimator import Estimate, NonFiniteLossError, ZOClosureError, ZOEstimator
from .optimizers import OPTIMIZERS, ZOSGD, RAdaZO, ZOAdaMM, ZoAR, ZOOptimizer, ZOSGDMomentum, ZOSignSGD
from .perturb import RestoreLog, perturb_, restore_
from .select import named_zo_parameters, param_groups
from .train import make_closure, zo_train

__all__ = [
    "OPTIMIZERS", "DirectionSampler", "Estimate", "NonFiniteLossError", "RAdaZO", "RestoreLog", "ZOAdaMM",
    "ZOClosureError", "ZOEstimator", "ZOOptimizer", "ZOSGD", "ZOSGDMomentum", "ZOSignSGD", "ZoAR",
    "make_closure", "mix_seed", "named_zo_parameters", "param_groups", "perturb_", "restore_", "zo_train",
]


def __getattr__(name: str):
    if name == "ZOTrainer":  # built on first use: importing transformers is deferred until needed
        from .train import ZOTrainer

        return ZOTrainer
    raise AttributeError(f"module 'lmopt.zo' has no attribute {name!r}")
