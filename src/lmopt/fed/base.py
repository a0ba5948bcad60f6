"""The contract every federated method follows, shared by the in-process loop and the Flower adapter.

A method is a configuration object with two sides:

* :meth:`FedMethod.new_server` returns a :class:`FedServer` holding the global model; each round it
  writes one message per selected client (:meth:`FedServer.configure`) and folds the replies into the
  global model (:meth:`FedServer.aggregate`), rejecting malformed replies with a logged reason;
* :meth:`FedMethod.train_client` is the client: it reads the server's message, brings its copy of the
  global model up to date, trains locally and returns its reply and its new state.

Messages are plain ``name -> value`` mappings (:mod:`lmopt.fed.messages`); the transports encode them, so
the byte count of a message is the size of its encoding.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .common import ClientState, ClientWork, log
from .messages import MalformedMessage, Value


@dataclass
class RoundOutcome:
    """What the server did with one round's replies."""

    round: int
    accepted: list[Any] = field(default_factory=list)
    rejected: dict[Any, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


class FedServer(ABC):
    """Server side of a method: the global model (``params``) and the rounds done so far."""

    method: FedMethod
    params: list[torch.Tensor]
    round: int

    @abstractmethod
    def configure(self, round: int, client_id: Any) -> dict[str, Value]:
        """The message that starts ``round`` on ``client_id``."""

    @abstractmethod
    def aggregate(self, round: int, replies: dict[Any, dict[str, Value]]) -> RoundOutcome:
        """Fold the replies of ``round`` into the global model; bad replies are rejected, never applied."""

    def reject(self, outcome: RoundOutcome, client_id: Any, reason: str) -> None:
        outcome.rejected[client_id] = reason
        log.warning("round %d: rejected the reply of client %s: %s", outcome.round, client_id, reason)


class FedMethod(ABC):
    """A federated method's configuration (a dataclass) and its two sides."""

    name: str = ""

    @abstractmethod
    def new_server(self, params: list[torch.Tensor], names: list[str]) -> FedServer:
        """A server whose global model starts at (a copy of) ``params``."""

    @abstractmethod
    def train_client(self, message: dict[str, Value], state: ClientState, work: ClientWork, client_id: Any
                     ) -> tuple[dict[str, Value], ClientState]:
        """One round on one client: ``(reply, new state)``."""

    def fingerprint(self) -> int:
        """A 63-bit hash of the configuration, sent with every message so mismatched parties fail loudly."""
        cfg = {k: v for k, v in asdict(self).items() if not callable(v)}  # type: ignore[call-overload]
        digest = hashlib.sha256(json.dumps([self.name, cfg], sort_keys=True, default=repr).encode()).digest()
        return int.from_bytes(digest[:8], "little") >> 1

    def check_fingerprint(self, message: dict[str, Value], who: str) -> None:
        got = message.get("fingerprint")
        if got != self.fingerprint():
            raise MalformedMessage(
                f"{who} was written for a different {self.name} configuration (fingerprint {got} vs "
                f"{self.fingerprint()}): build the server and every client from the same settings")


def check_round(message: dict[str, Value], expected: int, who: str) -> None:
    got = message.get("round")
    if not isinstance(got, int) or got != expected:
        raise MalformedMessage(f"{who} is for round {got!r}, expected round {expected}")
