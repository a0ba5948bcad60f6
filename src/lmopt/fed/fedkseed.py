"""FedKSeed and FedKSeed-Pro: federated zeroth-order tuning with a finite pool of shared seeds.

Qin et al., "Federated Full-Parameter Tuning of Billion-Sized Language Models with Communication Cost
under 18 Kilobytes", arXiv 2312.06353 (Algorithm 1); the released code is zhenqincn/FedKSeed.

* All parties share ``K`` candidate seeds (:func:`~lmopt.fed.common.candidate_seeds`, derived from one
  integer). A client runs ``local_steps`` MeZO steps (two-sided, ``eps``) on its data; each step draws a
  seed from the pool and its update is ``w <- w - lr (g z(seed) + wd w)`` with the projected gradient
  ``g = (L(w + eps z) - L(w - eps z)) / (2 eps)``. The client sends its ``(seed index, g)`` pairs, 6 bytes
  per step (``uint16`` index, ``float32`` value), never a tensor.
* The server sums the pairs per seed, weighted by the clients' example counts (``equal_weight`` for
  ``1/m``), and applies one update per used seed, in pool order, to the global model. The round's
  ``(index, summed value)`` list is the only thing a client downloads; a client that missed rounds (or
  joins late) replays every round it lacks from its own copy, and with ``replay_limit`` it instead
  downloads the server's latest checkpoint (every ``checkpoint_every`` rounds) plus the newer rounds.
  Everyone applies the same float32 values with the same arithmetic, so every replica of the global model
  is bit-identical.
* **FedKSeed-Pro** (``importance_sampling=True``, paper Sec. 4.2): seeds are drawn with probabilities
  ``softmax(minmax(mean_s |clip(g)|))`` over each seed's history of projected gradients (started at
  ``grad_initial``, values clipped to ``±bias_loss_clip``), computed by the server before each round and
  sent to the clients (``K`` float32).

Behaviour of the released code, and where it is kept:

* defaults: ``K=4096``, ``eps=5e-4``, ``lr=1e-3``, ``local_steps=200``, batch 1, weight decay 0 on all but
  biases and layer norms (``MEZO_NO_DECAY_PATTERNS``), example-count weighting: as released;
* a step whose loss is NaN (or infinite) is skipped and contributes no pair (as released); the released
  ``grad_clip`` (skip a step whose ``|L+ - L-|`` exceeds it; off by default) is ``loss_diff_clip``;
* the projected gradient is rounded to float32 before the client applies it, so the client's model is
  exactly what its pairs replay to;
* the released server rebuilds the model from ``w0`` with the all-round sums each round; lmopt applies each
  round's sums to the previous round's model. Without weight decay the two are the same sum of updates
  (up to float rounding); with weight decay the released code applies one decay per seed ever used, lmopt
  one per seed per round;
* ``perturb="exact"`` (default) evaluates ``L(w - eps z)`` from the exact ``w`` and restores the weights
  bit for bit (:mod:`lmopt.zo.perturb`); ``perturb="mezo"`` uses MeZO's ``+eps, -2 eps, +eps`` sequence,
  which drifts the local model slightly (the global model is unaffected: it is built from the pairs);
* randomness comes from seeded generators (the released code draws from numpy's and torch's global
  state), and the directions are :mod:`lmopt.zo`'s seeded Gaussian chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lmopt.zo import ZOSGD, NonFiniteLossError, ZOEstimator
from lmopt.zo.directions import mix_seed
from lmopt.zo.estimator import Estimate
from lmopt.zo.select import MEZO_NO_DECAY_PATTERNS

from .base import FedMethod, FedServer, RoundOutcome, check_round
from .common import (
    ClientState,
    ClientWork,
    aggregation_weights,
    arrays_to_tensors,
    candidate_seeds,
    catch_up,
    check_float,
    check_initial_weights,
    check_int,
    client_seed,
    log,
    tensor_digest,
    tensors_to_arrays,
)
from .messages import MalformedMessage, Value, field, index_dtype


class _PoolEstimator(ZOEstimator):
    """The ZO estimator with its direction seed set from outside (a seed of the shared pool)."""

    next_seed: int = 0

    def direction_seed(self, step: int, j: int) -> int:
        return self.next_seed


@dataclass
class FedKSeed(FedMethod):
    """FedKSeed (and FedKSeed-Pro with ``importance_sampling=True``); see the module doc for each option."""

    num_seeds: int = 4096
    lr: float = 1e-3
    eps: float = 5e-4
    local_steps: int = 200
    weight_decay: float = 0.0
    loss_diff_clip: float | None = None
    importance_sampling: bool = False
    bias_loss_clip: float = 1000.0
    grad_initial: float = 0.0
    equal_weight: bool = False
    seed: int = 0
    replay_limit: int | None = None
    checkpoint_every: int = 10
    perturb: str = "exact"

    def __post_init__(self) -> None:
        check_int("num_seeds", self.num_seeds, 1)
        if self.num_seeds > 1 << 32:
            raise ValueError(f"num_seeds must be <= 2^32, got {self.num_seeds}")
        check_float("lr", self.lr)
        check_float("eps", self.eps)
        check_int("local_steps", self.local_steps, 1)
        check_float("weight_decay", self.weight_decay, strict=False)
        if self.loss_diff_clip is not None:
            check_float("loss_diff_clip", self.loss_diff_clip)
        check_float("bias_loss_clip", self.bias_loss_clip)
        check_float("grad_initial", self.grad_initial, low=-math.inf)
        check_int("seed", self.seed, 0)
        if self.replay_limit is not None:
            check_int("replay_limit", self.replay_limit, 0)
        check_int("checkpoint_every", self.checkpoint_every, 1)
        if self.perturb not in ("exact", "mezo"):
            raise ValueError(f"perturb must be 'exact' or 'mezo', got {self.perturb!r}")
        self._pool: np.ndarray | None = None

    @property
    def name(self) -> str:  # type: ignore[override]
        return "fedkseed-pro" if self.importance_sampling else "fedkseed"

    @property
    def pool(self) -> np.ndarray:
        if self._pool is None:
            self._pool = candidate_seeds(self.num_seeds, self.seed)
        return self._pool

    # ------------------------------------------------------------------ shared arithmetic
    def optimizer(self, params: list[torch.Tensor], names: list[str]) -> ZOSGD:
        """MeZO's update over ``params``: decay on all but biases and layer norms, the pool's directions."""
        if self.weight_decay > 0:
            decay = [p for n, p in zip(names, params) if not any(k in n for k in MEZO_NO_DECAY_PATTERNS)]
            plain = [p for n, p in zip(names, params) if any(k in n for k in MEZO_NO_DECAY_PATTERNS)]
            groups = [{"params": g, "weight_decay": wd} for g, wd in ((decay, self.weight_decay), (plain, 0.0)) if g]
        else:
            groups = [{"params": list(params), "weight_decay": 0.0}]
        opt = ZOSGD(groups, lr=self.lr, mu=self.eps, perturb=self.perturb)
        opt.estimator = _PoolEstimator(**opt.estimator.config())
        return opt

    def apply_pairs_(self, opt: ZOSGD, indices: np.ndarray, values: np.ndarray) -> None:
        """``w <- w - lr (v z(pool[i]) + wd w)`` for each pair, in the given order."""
        pool = self.pool
        for i, v in zip(indices.tolist(), values.tolist()):
            opt.apply_estimate(Estimate(seeds=[int(pool[i])], coefs=[float(v)], loss=0.0, projected_grads=[],
                                        queries=0))

    def replay(self, params: list[torch.Tensor], names: list[str], indices: np.ndarray, values: np.ndarray
               ) -> None:
        """Apply ``(index, value)`` pairs to ``params`` in place (a client's steps, or a round's sums)."""
        with torch.no_grad():
            self.apply_pairs_(self.optimizer(params, names), np.asarray(indices), np.asarray(values,
                                                                                          dtype=np.float32))

    def probabilities(self, abs_sum: np.ndarray, count: np.ndarray) -> np.ndarray:
        """FedKSeed-Pro's seed probabilities from each seed's clipped |g| sum and count (released rule)."""
        mean = abs_sum / count
        lo = mean.min()
        norm = (mean - lo) / (mean.max() + 1e-10 - lo)
        e = np.exp(norm - norm.max())
        return e / e.sum()

    # ------------------------------------------------------------------ the two sides
    def new_server(self, params: list[torch.Tensor], names: list[str]) -> FedKSeedServer:
        return FedKSeedServer(self, params, names)

    def train_client(self, message: dict[str, Value], state: ClientState, work: ClientWork, client_id: Any
                     ) -> tuple[dict[str, Value], ClientState]:
        self.check_fingerprint(message, "the server's message")
        r = field(message, "round", int)
        state = self._catch_up(message, state, work.names, r)
        work.load(state.params)
        opt = self.optimizer(work.params, work.names)
        sampling_seed = client_seed(self.seed, r, client_id)
        rng = np.random.default_rng(sampling_seed)
        probs = None
        if self.importance_sampling:
            p = field(message, "probs", np.ndarray).astype(np.float64)
            if p.shape != (self.num_seeds,) or not np.all(np.isfinite(p)) or (p < 0).any() or p.sum() <= 0:
                raise MalformedMessage(f"the server's message has bad seed probabilities (shape {p.shape})")
            probs = p / p.sum()
        idx: list[int] = []
        val: list[float] = []
        skipped = 0
        indexed = opt._indexed()
        with torch.no_grad():
            for batch in work.data.batches(self.local_steps, mix_seed(sampling_seed, 1)):
                i = int(rng.choice(self.num_seeds, p=probs)) if probs is not None else int(rng.integers(self.num_seeds))
                opt.estimator.next_seed = int(self.pool[i])
                try:
                    est = opt.estimator.estimate(lambda b=batch: work.loss_fn(b), indexed, opt.zo_step)
                except NonFiniteLossError:
                    skipped += 1  # released: a NaN loss skips the step
                    continue
                if self.loss_diff_clip is not None and abs(est.values[0] - est.values[1]) > self.loss_diff_clip:
                    skipped += 1
                    continue
                g = np.float32(est.coefs[0])
                if not np.isfinite(g):
                    skipped += 1
                    continue
                est.coefs = [float(g)]
                opt.apply_estimate(est)
                idx.append(i)
                val.append(float(g))
        reply: dict[str, Value] = {
            "round": r, "synced_round": state.synced_round, "fingerprint": self.fingerprint(),
            "idx": np.asarray(idx, dtype=index_dtype(self.num_seeds)), "val": np.asarray(val, dtype=np.float32),
            "n_examples": len(work.data), "skipped": skipped,
        }
        return reply, state

    def _catch_up(self, message: dict[str, Value], state: ClientState, names: list[str], r: int) -> ClientState:
        """Bring the client's copy to round ``r - 1``: a checkpoint if sent and newer, then the missing rounds."""
        check_initial_weights(message, state)
        params = [p.clone() for p in state.params]
        synced = state.synced_round
        if "ckpt_round" in message:
            c = field(message, "ckpt_round", int)
            if c > synced:
                params = arrays_to_tensors(message, "ckpt", params, "the server's checkpoint")
                synced = c
        rounds = field(message, "upd_rounds", np.ndarray)
        counts = field(message, "upd_counts", np.ndarray)
        indices = field(message, "upd_idx", np.ndarray)
        values = field(message, "upd_val", np.ndarray)
        if len(rounds) != len(counts) or int(counts.sum()) != len(indices) or len(indices) != len(values):
            raise MalformedMessage("the server's round updates have inconsistent lengths")
        if len(indices) and int(indices.max()) >= self.num_seeds:
            raise MalformedMessage(f"the server's round updates name a seed outside the pool of {self.num_seeds}")
        starts = np.concatenate([[0], np.cumsum(counts.astype(np.int64))])

        def apply(k: int, u: int) -> None:
            self.replay(params, names, indices[starts[k]:starts[k + 1]], values[starts[k]:starts[k + 1]])

        synced = catch_up(rounds, synced, r - 1, apply)
        return ClientState(params, synced)


class FedKSeedServer(FedServer):
    """The global model, the per-round ``(index, value)`` history and FedKSeed-Pro's gradient statistics."""

    def __init__(self, method: FedKSeed, params: list[torch.Tensor], names: list[str]) -> None:
        self.method = method
        self.names = list(names)
        self.params = [p.detach().clone() for p in params]
        self.w0_digest = tensor_digest(self.params)
        self.round = 0
        self.history: list[tuple[int, np.ndarray, np.ndarray]] = []
        self.synced: dict[Any, int] = {}
        self.checkpoint: tuple[int, list[torch.Tensor]] | None = None
        k = method.num_seeds
        self.abs_sum = np.full(k, abs(np.clip(method.grad_initial, -method.bias_loss_clip, method.bias_loss_clip)))
        self.count = np.ones(k)
        self._probs: np.ndarray | None = None
        self._probs_round = -1

    def probabilities(self) -> np.ndarray:
        if self._probs_round != self.round:
            self._probs = self.method.probabilities(self.abs_sum, self.count)
            self._probs_round = self.round
        assert self._probs is not None
        return self._probs

    def configure(self, round: int, client_id: Any) -> dict[str, Value]:
        m = self.method
        if round != self.round + 1:
            raise ValueError(f"the server is after round {self.round}; it can configure round {self.round + 1}, "
                             f"not {round}")
        have = self.synced.get(client_id, 0)
        msg: dict[str, Value] = {"round": round, "fingerprint": m.fingerprint(), "w0_digest": self.w0_digest}
        pending = [h for h in self.history if h[0] > have]
        if (m.replay_limit is not None and len(pending) > m.replay_limit and self.checkpoint is not None
                and self.checkpoint[0] > have):
            c, tensors = self.checkpoint
            msg["ckpt_round"] = c
            msg.update(tensors_to_arrays(tensors, "ckpt"))
            pending = [h for h in pending if h[0] > c]
        idt = index_dtype(m.num_seeds)
        msg["upd_rounds"] = np.asarray([h[0] for h in pending], dtype=np.int32)
        msg["upd_counts"] = np.asarray([len(h[1]) for h in pending], dtype=np.uint32)
        msg["upd_idx"] = np.concatenate([h[1] for h in pending]).astype(idt) if pending else np.zeros(0, idt)
        msg["upd_val"] = (np.concatenate([h[2] for h in pending]).astype(np.float32) if pending
                          else np.zeros(0, np.float32))
        if m.importance_sampling:
            msg["probs"] = self.probabilities().astype(np.float32)
        return msg

    def _check_reply(self, reply: dict[str, Value], round: int) -> str | None:
        m = self.method
        try:
            m.check_fingerprint(reply, "the reply")
            check_round(reply, round, "the reply")
            idx = field(reply, "idx", np.ndarray, "the reply")
            val = field(reply, "val", np.ndarray, "the reply")
            n = field(reply, "n_examples", int, "the reply")
        except MalformedMessage as exc:
            return str(exc)
        if idx.ndim != 1 or val.ndim != 1 or len(idx) != len(val):
            return f"seed indices ({idx.shape}) and values ({val.shape}) do not pair up"
        if idx.dtype.kind not in "ui":
            return f"seed indices must be integers, got {idx.dtype}"
        if len(idx) > m.local_steps:
            return f"{len(idx)} pairs for {m.local_steps} local steps"
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= m.num_seeds):
            return f"seed index {int(idx.max()) if len(idx) else ''} is outside the pool of {m.num_seeds} seeds"
        if not np.all(np.isfinite(val)):
            return f"{int((~np.isfinite(val)).sum())} of {len(val)} projected gradients are not finite"
        if n < 1:
            return f"n_examples must be >= 1, got {n}"
        return None

    def aggregate(self, round: int, replies: dict[Any, dict[str, Value]]) -> RoundOutcome:
        m = self.method
        if round != self.round + 1:
            raise ValueError(f"round {round} cannot be aggregated after round {self.round}")
        out = RoundOutcome(round)
        good: dict[Any, dict[str, Value]] = {}
        for cid, reply in replies.items():
            synced = reply.get("synced_round")
            if isinstance(synced, int) and 0 <= synced < round:
                self.synced[cid] = synced
            reason = self._check_reply(reply, round)
            if reason is None:
                good[cid] = reply
                out.accepted.append(cid)
            else:
                self.reject(out, cid, reason)
        weights = aggregation_weights({c: int(r["n_examples"]) for c, r in good.items()}, m.equal_weight)
        acc = np.zeros(m.num_seeds)
        for cid, reply in good.items():
            idx = np.asarray(reply["idx"], dtype=np.int64)
            val = np.asarray(reply["val"], dtype=np.float64)
            local = np.zeros(m.num_seeds)
            np.add.at(local, idx, val)  # per seed, in step order, then weighted (the released order of sums)
            acc += local * weights[cid]
            if m.importance_sampling:
                np.add.at(self.abs_sum, idx, np.abs(np.clip(val, -m.bias_loss_clip, m.bias_loss_clip)))
                np.add.at(self.count, idx, 1.0)
        used = np.flatnonzero(acc)
        values = acc[used].astype(np.float32)
        keep = values != 0
        used, values = used[keep], values[keep]
        self._apply(used, values)
        self.history.append((round, used.astype(np.int64), values))
        self.round = round
        if round % m.checkpoint_every == 0:
            self.checkpoint = (round, [p.clone() for p in self.params])
        if not good:
            log.warning("round %d: no valid reply; the global model is unchanged", round)
        out.details = {"seeds_used": int(len(used)), "pairs": int(sum(len(r["idx"]) for r in good.values()))}
        return out

    def _apply(self, used: np.ndarray, values: np.ndarray) -> None:
        self.method.replay(self.params, self.names, used, values)

