"""Pieces shared by every federated method: the seed pool, client data and state, aggregation weights.

The algorithms work on an ordered list of trainable tensors (a model's trainable slice, or its LoRA
adapters): the *global model* is that list on the server; every client keeps its own copy of the last
global model it synchronised to (:class:`ClientState`) and trains on a live copy loaded into the shared
module (:class:`ClientWork`), so the frozen rest of the model is never duplicated.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lmopt.zo.directions import mix_seed

log = logging.getLogger("lmopt.fed")

SEED_HIGH = 100_000_000_000  # the released codes draw candidate seeds from [1, 1e11)


def candidate_seeds(num_seeds: int, seed: int) -> np.ndarray:
    """The ``K`` shared candidate seeds, distinct, derived from one integer ``seed``.

    Every party derives the same pool from ``seed``, so the pool itself never travels (8 bytes instead of
    ``8 K``). Drawn uniformly from ``[1, 1e11)`` like the released FedKSeed/Ferret code; a duplicate is
    replaced so that two indices never name the same direction.
    """
    check_int("num_seeds", num_seeds, 1)
    rng = np.random.default_rng(mix_seed(seed, 0x5EED))
    pool = rng.integers(1, SEED_HIGH, size=num_seeds, dtype=np.int64)
    while len(np.unique(pool)) < num_seeds:
        _, first = np.unique(pool, return_index=True)
        dup = np.setdiff1d(np.arange(num_seeds), first)
        pool[dup] = rng.integers(1, SEED_HIGH, size=len(dup), dtype=np.int64)
    return pool


def check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def check_float(name: str, value: Any, *, low: float = 0.0, strict: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (value <= low if strict else value < low):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low}, got {value!r}")
    return float(value)


@dataclass
class ClientData:
    """A client's training examples and how they are batched.

    ``examples`` are whatever the loss function takes a list of (token rows, indices into a cache, ...).
    Batches are drawn without replacement within an epoch, reshuffled per epoch by the generator the
    method derives from ``(run seed, client id, round)``.
    """

    examples: Sequence[Any]
    batch_size: int = 1

    def __post_init__(self) -> None:
        check_int("batch_size", self.batch_size, 1)
        if len(self.examples) == 0:
            raise ValueError("a client needs at least one training example (got an empty list)")

    def __len__(self) -> int:
        return len(self.examples)

    def batches(self, steps: int, seed: int) -> list[list[Any]]:
        """``steps`` batches from a seeded sequence of epochs."""
        rng = np.random.default_rng(seed)
        order: list[int] = []
        out = []
        n = len(self.examples)
        bs = min(self.batch_size, n)
        for _ in range(steps):
            if len(order) < bs:
                order = order + rng.permutation(n).tolist()
            take, order = order[:bs], order[bs:]
            out.append([self.examples[i] for i in take])
        return out


@dataclass
class ClientState:
    """What a client keeps between rounds: its copy of the global model after round ``synced_round``."""

    params: list[torch.Tensor]
    synced_round: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def initial(cls, params: Sequence[torch.Tensor]) -> ClientState:
        """A client that holds the shared initial weights ``w0`` (round 0)."""
        return cls([p.detach().clone() for p in params], 0)


@dataclass
class ClientWork:
    """The live tensors a client trains (views into the shared module), their names, loss and data.

    ``loss_fn(batch)`` must compute the loss of a list of examples with the module that owns ``params``.
    """

    params: list[torch.Tensor]
    names: list[str]
    loss_fn: Callable[[list[Any]], torch.Tensor]
    data: ClientData

    def __post_init__(self) -> None:
        if len(self.params) != len(self.names):
            raise ValueError(f"{len(self.params)} tensors but {len(self.names)} names")
        if not self.params:
            raise ValueError("a client needs at least one trainable tensor")

    def load(self, tensors: Sequence[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, t in zip(self.params, tensors):
                p.copy_(t)

    def snapshot(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.params]


def aggregation_weights(n_examples: dict[Any, int], equal: bool) -> dict[Any, float]:
    """Each accepted client's weight: ``1/m`` (``equal``) or its share of the examples (FedAvg's rule)."""
    if not n_examples:
        return {}
    if equal:
        return {c: 1.0 / len(n_examples) for c in n_examples}
    total = float(sum(n_examples.values()))
    return {c: n / total for c, n in n_examples.items()}


def tensors_to_arrays(tensors: Sequence[torch.Tensor], prefix: str) -> dict[str, np.ndarray]:
    """Tensors as float32 message fields ``prefix0``, ``prefix1``, ... (exact for fp32 tensors)."""
    return {f"{prefix}{i}": t.detach().to(torch.float32).cpu().numpy().copy() for i, t in enumerate(tensors)}


def arrays_to_tensors(message: dict[str, Any], prefix: str, like: Sequence[torch.Tensor], who: str
                      ) -> list[torch.Tensor]:
    """The inverse of :func:`tensors_to_arrays`, checked against the shapes of ``like``."""
    from .messages import MalformedMessage

    out = []
    for i, ref in enumerate(like):
        arr = message.get(f"{prefix}{i}")
        if not isinstance(arr, np.ndarray) or tuple(arr.shape) != tuple(ref.shape):
            got = None if arr is None else getattr(arr, "shape", type(arr).__name__)
            raise MalformedMessage(f"{who}: tensor {prefix}{i} should have shape {tuple(ref.shape)}, got {got}")
        out.append(torch.from_numpy(np.array(arr, dtype=np.float32)).to(device=ref.device, dtype=ref.dtype))
    return out


def flat_norm(tensors: Sequence[torch.Tensor]) -> float:
    return float(torch.sqrt(sum((t.double() ** 2).sum() for t in tensors)))


def hash_id(client_id: Any) -> int:
    """A stable integer for a client id (ints as themselves, anything else hashed from its repr)."""
    if isinstance(client_id, (int, np.integer)) and not isinstance(client_id, bool):
        return int(client_id)
    import hashlib

    return int.from_bytes(hashlib.sha256(repr(client_id).encode()).digest()[:8], "little") >> 1


def client_seed(seed: int, round: int, client_id: Any) -> int:
    """The seed of a client's randomness in a round (its batches, seed draws): derived by the client itself."""
    return mix_seed(seed, round, hash_id(client_id))


def tensor_digest(tensors: Sequence[torch.Tensor]) -> int:
    """A 63-bit digest of tensors' values (float32 bytes), to check that every party starts from the same w0."""
    import hashlib

    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "little") >> 1


def check_initial_weights(message: dict[str, Any], state: ClientState) -> None:
    """A client that has never synchronised holds ``w0``: it must be the server's (``w0_digest``)."""
    from .messages import MalformedMessage

    want = message.get("w0_digest")
    if state.synced_round == 0 and isinstance(want, int) and tensor_digest(state.params) != want:
        raise MalformedMessage(
            "this client's initial weights differ from the server's (different w0 digest): every party must "
            "start from the same initial tensors (load the same checkpoint, or seed the initialisation)")


def catch_up(rounds: Sequence[int], synced: int, target: int, apply: Callable[[int, int], None]) -> int:
    """Apply the sent rounds the client lacks, in order: ``apply(k, round)`` for the ``k``-th sent round.

    Rounds at or below ``synced`` are skipped (applied already, from a reply that never reached the
    server); a gap, or ending anywhere but ``target``, is a :class:`MalformedMessage`. Returns ``target``.
    """
    from .messages import MalformedMessage

    for k, u in enumerate(int(x) for x in rounds):
        if u <= synced:
            continue
        if u != synced + 1:
            raise MalformedMessage(f"the client holds round {synced} but the next update sent is for round {u}")
        apply(k, u)
        synced = u
    if synced != target:
        raise MalformedMessage(f"after the updates sent the client holds round {synced}, but the round starts "
                               f"from round {target}: the server must send the missing rounds")
    return synced
