"""First-order optimizers for language-model training, with the torch.optim contract.

Each optimizer is a :class:`torch.optim.Optimizer` (param groups, ``step(closure)``, ``zero_grad``,
``state_dict``/``load_state_dict``, ``maximize``, decoupled weight decay as its paper defines it). The maths
of one tensor is a plain function (the reference); the fast path compiles that function with
``torch.compile`` (``impl="auto"`` picks it when a compiler is available), and the matrix optimizers batch
their linear algebra. ``state_dtype=torch.bfloat16`` stores moments in bf16 (fp32 arithmetic).

Optimizers: :class:`Lion`, :class:`LionK`, :class:`AdaBelief`, :class:`APOLLO`, :class:`APOLLOMini`,
:class:`EXAdam`, :class:`Muon`, :class:`SOAP`; schedule search: :class:`AutoLRS`; helpers:
:func:`muon_param_groups`, :func:`apollo_param_groups`, :func:`muon_for_trainer`, :func:`apollo_for_trainer`.
"""

from .adabelief import AdaBelief
from .apollo import APOLLO, APOLLOMini
from .autolrs import AutoLRS, forecast_exponential
from .exadam import EXAdam
from .groups import apollo_for_trainer, apollo_param_groups, muon_for_trainer, muon_param_groups
from .lion import Lion, LionK
from .muon import Muon, newton_schulz
from .soap import SOAP

__all__ = [
    "APOLLO", "APOLLOMini", "AdaBelief", "AutoLRS", "EXAdam", "Lion", "LionK", "Muon", "SOAP", "apollo_for_trainer",
    "apollo_param_groups", "forecast_exponential", "muon_for_trainer", "muon_param_groups",
    "newton_schulz",
]
