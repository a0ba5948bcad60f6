"""FedAvg (McMahan et al., arXiv 1602.05629): the baseline that sends the trainable tensors themselves.

Each round the server sends the global trainable tensors (float32) to every selected client, the client
runs the same first-order local loop as Ferret (:func:`~lmopt.fed.local.local_sgd`) and sends its tensors
back, and the server replaces the global tensors by their example-weighted mean. On a model's trainable
slice this is "FedAvg of full weights"; on a LoRA-injected model (:func:`lora_trainables`) it is FedAvg of
the adapters, the usual parameter-efficient baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lmopt.zo.directions import mix_seed

from .base import FedMethod, FedServer, RoundOutcome, check_round
from .common import (
    ClientState,
    ClientWork,
    aggregation_weights,
    arrays_to_tensors,
    check_float,
    check_int,
    client_seed,
    log,
    tensors_to_arrays,
)
from .local import OptimizerFactory, local_sgd, sgd_factory
from .messages import MalformedMessage, Value, field


@dataclass
class FedAvg(FedMethod):
    """FedAvg with ``local_steps`` first-order steps per round (optimizer, ``n_accum`` and clip as in Ferret)."""

    lr: float = 1e-4
    local_steps: int = 40
    n_accum: int = 1
    grad_clip: float | None = None
    weight_decay: float = 0.0
    optimizer: OptimizerFactory | None = None
    equal_weight: bool = False
    seed: int = 0

    name = "fedavg"

    def __post_init__(self) -> None:
        check_float("lr", self.lr)
        check_int("local_steps", self.local_steps, 1)
        check_int("n_accum", self.n_accum, 1)
        if self.grad_clip is not None:
            check_float("grad_clip", self.grad_clip)
        check_float("weight_decay", self.weight_decay, strict=False)
        check_int("seed", self.seed, 0)

    def new_server(self, params: list[torch.Tensor], names: list[str]) -> FedAvgServer:
        return FedAvgServer(self, params, names)

    def train_client(self, message: dict[str, Value], state: ClientState, work: ClientWork, client_id: Any
                     ) -> tuple[dict[str, Value], ClientState]:
        self.check_fingerprint(message, "the server's message")
        r = field(message, "round", int)
        work.load(arrays_to_tensors(message, "w", work.params, "the server's message"))
        factory = self.optimizer if self.optimizer is not None else sgd_factory(self.lr, self.weight_decay)
        stats = local_sgd(work, self.local_steps, mix_seed(client_seed(self.seed, r, client_id), 1), factory,
                          self.n_accum, self.grad_clip)
        reply: dict[str, Value] = {"round": r, "fingerprint": self.fingerprint(), "n_examples": len(work.data),
                                   "train_loss": float(stats["loss"]), **tensors_to_arrays(work.params, "w")}
        return reply, ClientState([], r - 1)


class FedAvgServer(FedServer):
    def __init__(self, method: FedAvg, params: list[torch.Tensor], names: list[str]) -> None:
        self.method = method
        self.names = list(names)
        self.params = [p.detach().clone() for p in params]
        self.round = 0

    def configure(self, round: int, client_id: Any) -> dict[str, Value]:
        if round != self.round + 1:
            raise ValueError(f"the server is after round {self.round}; it can configure round {self.round + 1}")
        return {"round": round, "fingerprint": self.method.fingerprint(),
                **tensors_to_arrays(self.params, "w")}

    def aggregate(self, round: int, replies: dict[Any, dict[str, Value]]) -> RoundOutcome:
        if round != self.round + 1:
            raise ValueError(f"round {round} cannot be aggregated after round {self.round}")
        out = RoundOutcome(round)
        good: dict[Any, list[torch.Tensor]] = {}
        sizes: dict[Any, int] = {}
        for cid, reply in replies.items():
            try:
                self.method.check_fingerprint(reply, "the reply")
                check_round(reply, round, "the reply")
                n = field(reply, "n_examples", int, "the reply")
                if n < 1:
                    raise MalformedMessage(f"n_examples must be >= 1, got {n}")
                tensors = arrays_to_tensors(reply, "w", self.params, "the reply")
                bad = sum(int((~torch.isfinite(t)).sum()) for t in tensors)
                if bad:
                    raise MalformedMessage(f"{bad} weights are not finite")
            except MalformedMessage as exc:
                self.reject(out, cid, str(exc))
                continue
            good[cid], sizes[cid] = tensors, n
            out.accepted.append(cid)
        weights = aggregation_weights(sizes, self.method.equal_weight)
        if good:
            with torch.no_grad():
                for i, p in enumerate(self.params):
                    mean = sum(weights[c] * good[c][i].double() for c in good)
                    p.copy_(mean.to(p.dtype))
        else:
            log.warning("round %d: no valid reply; the global model is unchanged", round)
        self.round = round
        return out


def lora_trainables(model: torch.nn.Module, target_modules: Sequence[str], r: int = 8, alpha: float = 16.0,
                    dropout: float = 0.0, seed: int = 0) -> tuple[list[torch.Tensor], list[str]]:
    """Inject LoRA adapters (peft) into ``model`` in place and return its trainable adapter tensors and names.

    Only the adapters are trainable afterwards; the initial adapters come from ``seed`` (every party must
    use the same one, as with any shared initial model). Needs the ``peft`` extra.
    """
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("FedAvg of LoRA adapters needs peft: pip install 'lmopt[peft]'") from exc
    names_before = {n for n, _ in model.named_modules()}
    if not any(n.split(".")[-1] in target_modules for n in names_before):
        raise ValueError(f"no module of the model is named {list(target_modules)}; LoRA targets must be module "
                         f"names such as {sorted({n.split('.')[-1] for n in names_before if n})[:8]}")
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                           target_modules=list(target_modules)), model)
    named = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    for _, p in named:
        p.requires_grad_(False)
    return [p for _, p in named], [n for n, _ in named]


def payload_floats(tensors: Sequence[torch.Tensor]) -> int:
    return int(np.sum([t.numel() for t in tensors]))
