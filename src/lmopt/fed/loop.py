"""The in-process federated loop: every client in turn, deterministic, no Ray, exact byte accounting.

:func:`run_federated` drives a method's server and clients through ``rounds`` rounds. Every message goes
through :func:`~lmopt.fed.messages.encode` and :func:`~lmopt.fed.messages.decode`, so the bytes counted
per client and round are the sizes of the real payloads, and a reply that does not decode is rejected
like any other malformed reply. ``transport(round, client_id, reply_bytes)`` (optional) stands for the
network: it may return the bytes unchanged, altered, or ``None`` for a client that drops out; the tests
inject faults with it. A client whose training raises is logged and counted as dropped (the round goes on
with the others); if every selected client raises, the first error is raised, since that is a bug rather
than a fault.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lmopt.zo.directions import mix_seed

from .base import FedMethod
from .common import ClientData, ClientState, ClientWork, check_int, log
from .messages import MalformedMessage, decode, encode

Transport = Callable[[int, Any, bytes], "bytes | None"]


@dataclass
class RoundRecord:
    """One round: who took part, what was rejected, bytes per client each way, times and metrics."""

    round: int
    selected: list[Any]
    accepted: list[Any]
    rejected: dict[Any, str]
    dropped: dict[Any, str]
    bytes_down: dict[Any, int]
    bytes_up: dict[Any, int]
    client_seconds: dict[Any, float]
    server_seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def mean_bytes_per_client(self) -> float:
        """Mean over the selected clients of their bytes down + up in this round."""
        if not self.selected:
            return 0.0
        return float(np.mean([self.bytes_down.get(c, 0) + self.bytes_up.get(c, 0) for c in self.selected]))


@dataclass
class FedResult:
    method: str
    rounds: list[RoundRecord]
    initial_metrics: dict[str, float]
    params: list[torch.Tensor]

    def cumulative_bytes_per_client(self) -> list[float]:
        """After each round: the mean over clients of all the bytes each has sent and received so far."""
        clients = {c for r in self.rounds for c in r.selected}
        totals = dict.fromkeys(clients, 0)
        out = []
        for r in self.rounds:
            for c in r.selected:
                totals[c] += r.bytes_down.get(c, 0) + r.bytes_up.get(c, 0)
            out.append(float(np.mean(list(totals.values()))) if totals else 0.0)
        return out


def select_clients(ids: Sequence[Any], per_round: int | None, round: int, seed: int) -> list[Any]:
    """``per_round`` of ``ids`` drawn without replacement from a generator seeded by ``(seed, round)``."""
    if per_round is None or per_round >= len(ids):
        return list(ids)
    rng = np.random.default_rng(mix_seed(seed, round, 0xC11E))
    picked = sorted(rng.choice(len(ids), size=per_round, replace=False).tolist())
    return [ids[i] for i in picked]


def run_federated(method: FedMethod, params: Sequence[torch.Tensor], names: Sequence[str],
                  loss_fn: Callable[[list[Any]], torch.Tensor], clients: Mapping[Any, ClientData], rounds: int, *,
                  clients_per_round: int | None = None, seed: int = 0,
                  evaluate: Callable[[], Mapping[str, float]] | None = None, transport: Transport | None = None,
                  join_round: Mapping[Any, int] | None = None,
                  on_round: Callable[[RoundRecord], None] | None = None) -> FedResult:
    """Run ``method`` for ``rounds`` rounds over ``clients`` (id -> data) on the live tensors ``params``.

    ``params`` are the trainable tensors of the module ``loss_fn`` and ``evaluate`` use; they are borrowed
    by each client in turn and hold the global model after every round (and at the end). ``join_round``
    makes a client available only from that round on (a late joiner: it starts from ``w0`` and must catch
    up). ``evaluate()`` is called on the global model before the first round and after each one.
    """
    check_int("rounds", rounds, 1)
    if clients_per_round is not None:
        check_int("clients_per_round", clients_per_round, 1)
    if not clients:
        raise ValueError("run_federated needs at least one client")
    live = list(params)
    names = list(names)
    work_of = {cid: ClientWork(live, names, loss_fn, data) for cid, data in clients.items()}
    w0 = [p.detach().clone() for p in live]
    server = method.new_server(live, names)
    states: dict[Any, ClientState] = {}
    joins = dict(join_round or {})

    def load_global() -> None:
        with torch.no_grad():
            for p, g in zip(live, server.params):
                p.copy_(g)

    initial = dict(evaluate()) if evaluate is not None else {}
    records: list[RoundRecord] = []
    for r in range(1, rounds + 1):
        available = [c for c in clients if joins.get(c, 1) <= r]
        selected = select_clients(available, clients_per_round, r, seed)
        rec = RoundRecord(r, selected, [], {}, {}, {}, {}, {}, 0.0)
        raw_replies: dict[Any, bytes] = {}
        errors: list[BaseException] = []
        for cid in selected:
            t0 = time.perf_counter()
            down = encode(server.configure(r, cid))
            rec.server_seconds += time.perf_counter() - t0
            rec.bytes_down[cid] = len(down)
            state = states.get(cid) or ClientState.initial(w0)
            t0 = time.perf_counter()
            try:
                reply, new_state = method.train_client(decode(down), state, work_of[cid], cid)
            except Exception as exc:  # a failing client is a dropped client, not a crashed round
                rec.client_seconds[cid] = time.perf_counter() - t0
                rec.dropped[cid] = f"{type(exc).__name__}: {exc}"
                log.warning("round %d: client %s failed and is left out: %s", r, cid, rec.dropped[cid])
                errors.append(exc)
                continue
            rec.client_seconds[cid] = time.perf_counter() - t0
            states[cid] = new_state
            up = encode(reply)
            if transport is not None:
                up = transport(r, cid, up)
            if up is None:
                rec.dropped[cid] = "no reply"
                log.warning("round %d: client %s sent no reply and is left out", r, cid)
                continue
            rec.bytes_up[cid] = len(up)
            raw_replies[cid] = up
        if selected and len(errors) == len(selected):
            raise errors[0]
        t0 = time.perf_counter()
        replies = {}
        for cid, up in raw_replies.items():
            try:
                replies[cid] = decode(up)
            except MalformedMessage as exc:
                rec.rejected[cid] = f"malformed message: {exc}"
                log.warning("round %d: rejected the reply of client %s: %s", r, cid, rec.rejected[cid])
        outcome = server.aggregate(r, replies)
        rec.server_seconds += time.perf_counter() - t0
        rec.accepted = list(outcome.accepted)
        rec.rejected.update(outcome.rejected)
        rec.details = dict(outcome.details)
        load_global()
        if evaluate is not None:
            rec.metrics = dict(evaluate())
        records.append(rec)
        if on_round is not None:
            on_round(rec)
    load_global()
    return FedResult(method.name, records, initial, [p.detach().clone() for p in server.params])
