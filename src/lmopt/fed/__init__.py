"""Federated tuning with shared randomness: FedKSeed, FedKSeed-Pro, Ferret, and FedAvg baselines.

* :mod:`~lmopt.fed.fedkseed` — FedKSeed / FedKSeed-Pro (arXiv 2312.06353): zeroth-order local steps whose
  directions come from a pool of ``K`` shared seeds; a step travels as (seed index, scalar);
* :mod:`~lmopt.fed.ferret` — Ferret (arXiv 2409.06277): first-order local steps, the update projected on
  seeded random bases;
* :mod:`~lmopt.fed.fedavg` — FedAvg of the trainable tensors or of LoRA adapters (peft);
* :mod:`~lmopt.fed.loop` — a deterministic in-process loop with exact byte accounting;
* :mod:`~lmopt.fed.flower` — the same clients and servers as a Flower ``ClientApp`` / ``ServerApp`` and
  ``Strategy`` (needs the ``fed`` extra; everything else imports without Flower).
"""

from .base import FedMethod, FedServer, RoundOutcome
from .common import ClientData, ClientState, ClientWork, candidate_seeds
from .fedavg import FedAvg, lora_trainables
from .fedkseed import FedKSeed
from .ferret import Ferret, reconstruction_error
from .loop import FedResult, RoundRecord, run_federated
from .messages import MalformedMessage, decode, encode

METHODS = {
    "fedkseed": FedKSeed,
    "fedkseed-pro": lambda **kw: FedKSeed(importance_sampling=True, **kw),
    "ferret": Ferret,
    "fedavg": FedAvg,
}

__all__ = [
    "METHODS", "ClientData", "ClientState", "ClientWork", "FedAvg", "FedKSeed", "FedMethod", "FedResult",
    "FedServer", "Ferret", "MalformedMessage", "RoundOutcome", "RoundRecord", "candidate_seeds", "decode",
    "encode", "lora_trainables", "reconstruction_error", "run_federated",
]
