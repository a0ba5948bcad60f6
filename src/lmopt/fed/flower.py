"""lmopt's federated methods on Flower (the ``fed`` extra: ``pip install 'lmopt[fed]'``).

The same :class:`~lmopt.fed.base.FedMethod` clients and servers as the in-process loop, behind Flower's
Message API, so the code runs in Flower's simulation (``flwr run`` with the simulation runtime, or
:func:`run_simulation` here) and on real devices (``flwr run`` against a SuperLink):

* :func:`client_app` builds a ``ClientApp`` whose ``@app.train`` function reads the server's payload,
  trains with :meth:`FedMethod.train_client` and keeps the client's copy of the global model in the
  node's ``Context.state`` between rounds;
* :class:`LmoptStrategy` is a ``flwr.serverapp.strategy.Strategy`` that wraps the method's server:
  ``configure_train`` writes one payload per sampled node, ``aggregate_train`` folds the replies in
  (a node that errs or times out is dropped, a malformed reply is rejected with a log line) and returns
  the global tensors as an ``ArrayRecord``;
* :func:`server_app` builds a ``ServerApp`` whose ``@app.main()`` runs the strategy.

Every payload travels as one ``uint8`` array holding :func:`~lmopt.fed.messages.encode`'s bytes, so the
byte counts the strategy records are the same as the in-process loop's; Flower's own envelope (message
metadata, protobuf framing) comes on top. Clients are identified to the method by their
``partition-id`` node config (0, 1, ... in simulation), which seeds their local randomness, so a
simulation reproduces :func:`~lmopt.fed.loop.run_federated` on the same clients.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from lmopt._deps import require

from .base import FedMethod
from .common import ClientState, ClientWork, log
from .loop import RoundRecord, select_clients
from .messages import MalformedMessage, decode, encode

_KEY = "lmopt"


def _flwr():
    return require("flwr", "fed")


def to_content(data: bytes) -> Any:
    """A Flower ``RecordDict`` carrying ``data`` as one ``uint8`` array."""
    _flwr()
    from flwr.app import Array, ArrayRecord, RecordDict

    return RecordDict({_KEY: ArrayRecord({"payload": Array(np.frombuffer(data, dtype=np.uint8).copy())})})


def from_content(content: Any) -> bytes:
    """The payload bytes of a ``RecordDict`` written by :func:`to_content`."""
    try:
        return content[_KEY]["payload"].numpy().astype(np.uint8).tobytes()
    except (KeyError, AttributeError, TypeError) as exc:
        raise MalformedMessage(f"the Flower message carries no lmopt payload ({exc})") from exc


def _save_state(context: Any, state: ClientState) -> None:
    from flwr.app import Array, ArrayRecord, ConfigRecord

    context.state[f"{_KEY}.params"] = ArrayRecord(
        {f"t{i}": Array(t.detach().cpu().numpy().copy()) for i, t in enumerate(state.params)})
    context.state[f"{_KEY}.meta"] = ConfigRecord({"synced_round": state.synced_round, "n": len(state.params)})


def _load_state(context: Any, w0: Sequence[torch.Tensor]) -> ClientState:
    if f"{_KEY}.meta" not in context.state:
        return ClientState.initial(w0)
    meta = context.state[f"{_KEY}.meta"]
    arrays = context.state[f"{_KEY}.params"]
    params = [torch.from_numpy(arrays[f"t{i}"].numpy().copy()).to(device=w.device, dtype=w.dtype)
              for i, w in zip(range(int(meta["n"])), w0)]
    return ClientState(params, int(meta["synced_round"]))


ClientSetup = Callable[[Any], tuple[ClientWork, Sequence[torch.Tensor]]]


def client_app(method: FedMethod, setup: ClientSetup) -> Any:
    """A Flower ``ClientApp`` running ``method``'s client.

    ``setup(context)`` returns the node's :class:`~lmopt.fed.common.ClientWork` (live trainable tensors of
    its model, loss, its data partition, e.g. chosen by ``context.node_config["partition-id"]``) and the
    shared initial weights ``w0`` of those tensors; it may cache its model between calls.
    """
    _flwr()
    from flwr.app import Message
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg: Any, context: Any) -> Any:
        work, w0 = setup(context)
        client_id = context.node_config.get("partition-id", context.node_id)
        state = _load_state(context, w0)
        reply, new_state = method.train_client(decode(from_content(msg.content)), state, work, client_id)
        _save_state(context, new_state)
        return Message(content=to_content(encode(reply)), reply_to=msg)

    return app


class LmoptStrategy:
    """Build with :func:`make_strategy` (the class subclasses Flower's ``Strategy`` lazily)."""


def make_strategy(method: FedMethod, params: Sequence[torch.Tensor], names: Sequence[str], *,
                  clients_per_round: int | None = None, seed: int = 0, min_nodes: int = 1) -> Any:
    """A ``flwr.serverapp.strategy.Strategy`` running ``method``'s server on the global tensors ``params``.

    Each round it samples ``clients_per_round`` of the connected nodes (all by default; seeded by
    ``(seed, round)``), waiting until ``min_nodes`` are connected. ``strategy.records`` holds one
    :class:`~lmopt.fed.loop.RoundRecord` per round (bytes each way per node, dropped and rejected nodes)
    and ``strategy.server`` the method's server.
    """
    _flwr()
    from flwr.app import Array, ArrayRecord, MessageType, MetricRecord
    from flwr.serverapp.strategy import Strategy

    class _Strategy(Strategy, LmoptStrategy):
        def __init__(self) -> None:
            self.method = method
            self.server = method.new_server(list(params), list(names))
            self.records: list[RoundRecord] = []
            self._pending: RoundRecord | None = None

        def global_arrays(self) -> Any:
            return ArrayRecord({f"t{i}": Array(t.detach().cpu().numpy().copy())
                                for i, t in enumerate(self.server.params)})

        def configure_train(self, server_round: int, arrays: Any, config: Any, grid: Any) -> Iterable[Any]:
            from flwr.app import Message

            while len(ids := sorted(grid.get_node_ids())) < min_nodes:
                time.sleep(0.2)
            selected = select_clients(ids, clients_per_round, server_round, seed)
            rec = RoundRecord(server_round, selected, [], {}, {}, {}, {}, {}, 0.0)
            out = []
            t0 = time.perf_counter()
            for node in selected:
                data = encode(self.server.configure(server_round, node))
                rec.bytes_down[node] = len(data)
                out.append(Message(content=to_content(data), message_type=MessageType.TRAIN, dst_node_id=node))
            rec.server_seconds += time.perf_counter() - t0
            self._pending = rec
            return out

        def aggregate_train(self, server_round: int, replies: Iterable[Any]) -> tuple[Any, Any]:
            rec = self._pending
            assert rec is not None and rec.round == server_round
            t0 = time.perf_counter()
            decoded = {}
            for msg in sorted(replies, key=lambda m: m.metadata.src_node_id):
                node = msg.metadata.src_node_id
                if msg.has_error():
                    rec.dropped[node] = f"error: {msg.error.reason}"
                    log.warning("round %d: node %s failed and is left out: %s", server_round, node, msg.error.reason)
                    continue
                try:
                    data = from_content(msg.content)
                    rec.bytes_up[node] = len(data)
                    decoded[node] = decode(data)
                except MalformedMessage as exc:
                    rec.rejected[node] = f"malformed message: {exc}"
                    log.warning("round %d: rejected the reply of node %s: %s", server_round, node, exc)
            for node in rec.selected:
                if node not in decoded and node not in rec.dropped and node not in rec.rejected:
                    rec.dropped[node] = "no reply"
            outcome = self.server.aggregate(server_round, decoded)
            rec.accepted = list(outcome.accepted)
            rec.rejected.update(outcome.rejected)
            rec.details = dict(outcome.details)
            rec.server_seconds += time.perf_counter() - t0
            self.records.append(rec)
            metrics = MetricRecord({"accepted": len(rec.accepted), "rejected": len(rec.rejected),
                                    "dropped": len(rec.dropped), "bytes_up": sum(rec.bytes_up.values()),
                                    "bytes_down": sum(rec.bytes_down.values())})
            return self.global_arrays(), metrics

        def configure_evaluate(self, server_round: int, arrays: Any, config: Any, grid: Any) -> Iterable[Any]:
            return []  # evaluation is centralised (start(evaluate_fn=...))

        def aggregate_evaluate(self, server_round: int, replies: Iterable[Any]) -> Any:
            return None

        def summary(self) -> None:
            log.info("lmopt %s strategy over %d tensors", method.name, len(self.server.params))

    return _Strategy()


def server_app(method: FedMethod, params: Sequence[torch.Tensor], names: Sequence[str], rounds: int, *,
               clients_per_round: int | None = None, seed: int = 0, min_nodes: int = 1,
               evaluate: Callable[[int, list[torch.Tensor]], dict[str, float] | None] | None = None,
               on_finish: Callable[[Any], None] | None = None) -> Any:
    """A Flower ``ServerApp`` whose ``@app.main()`` runs ``method`` for ``rounds`` rounds.

    ``evaluate(round, global_tensors)`` (optional) is Flower's centralised evaluation; ``on_finish`` gets
    the strategy at the end (its ``records`` and ``server.params``).
    """
    _flwr()
    from flwr.app import MetricRecord
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Any, context: Any) -> None:
        strategy = make_strategy(method, params, names, clients_per_round=clients_per_round, seed=seed,
                                 min_nodes=min_nodes)

        def evaluate_fn(rnd: int, arrays: Any) -> Any:
            if evaluate is None:
                return None
            out = evaluate(rnd, [p.clone() for p in strategy.server.params])
            return MetricRecord({k: float(v) for k, v in out.items()}) if out else None

        strategy.start(grid=grid, initial_arrays=strategy.global_arrays(), num_rounds=rounds,
                       evaluate_fn=evaluate_fn if evaluate is not None else None)
        if on_finish is not None:
            on_finish(strategy)

    return app


def run_simulation(server: Any, client: Any, num_nodes: int, *, num_cpus: int = 2,
                   cpus_per_client: float = 1.0) -> None:
    """Flower's simulation runtime on this machine (Ray bound to 127.0.0.1, no dashboard).

    ``flwr run`` is Flower's recommended entry point for simulations of a packaged app; this wraps
    ``flwr.simulation.run_simulation`` for scripts and tests that build the apps in Python.
    """
    _flwr()
    import warnings

    from flwr.simulation import run_simulation as flwr_run_simulation

    backend = {"init_args": {"num_cpus": num_cpus, "include_dashboard": False, "_node_ip_address": "127.0.0.1",
                             "log_to_driver": False},
               "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        flwr_run_simulation(server_app=server, client_app=client, num_supernodes=num_nodes, backend_config=backend)
