"""Ferret: first-order local training, updates sent as coordinates on shared random bases.

Shu et al., "Ferret: Federated Full-Parameter Tuning at Scale for Large Language Models",
arXiv 2409.06277 (Algorithm 1); the released code is allen4747/Ferret (``optimizers/ferret_optimizer.py``).

Client: ``local_steps`` first-order steps (any ``torch.optim`` / :mod:`lmopt.optim` optimizer through
``optimizer``; default the released plain SGD), then the update ``Δ = w_start - w_end`` is projected per
parameter group ``g`` of size ``d_g``: the group gets ``n_g = max(int(K ||Δ_g|| / max_h ||Δ_h||), 2)`` seed
indices drawn from the pool without replacement, and for each index ``k`` the coordinate
``c_gk = (d_g / n_g) <Δ_g, b(seed_k, d_g)>`` is sent (6 bytes: index and float32 value).

Server: the coordinates are averaged over the clients (weights ``1/m`` by default, as in the released
script), optionally with momentum, and the global model moves by
``w <- w - lr_s clip(c_gk b(seed_k, d_g), clip_norm)`` for every (seed, group) in pool order, each term
clipped to norm ``clip_norm`` on its own. Clients download the same coordinates and apply the same
reconstruction, so every replica of the global model is bit-identical.

Bases: ``basis="truncated"`` (default, released) draws ``b`` from a standard normal truncated to
``[-1/sqrt(d), 1/sqrt(d)]``, almost uniform there, so ``E[b bᵀ] = σ² I`` with ``σ² ≈ 1/(3d)``: the
reconstruction's expectation is ``d σ² Δ ≈ Δ/3``. The released server learning rate of 10 therefore
amounts to a step of about ``3.3 Δ`` (and the per-term clip bounds it). ``basis="unbiased"`` rescales the
same draws by ``1/sqrt(d σ²)`` (``σ²`` the exact truncated-normal variance), so ``E[b bᵀ] = I/d`` and the
reconstruction is unbiased for ``Δ``; with it ``server_lr=1`` is the plain average of the client updates.
:func:`reconstruction_error` measures either.

Behaviour of the released code and where it is kept: groups are consecutive tensors merged while below
``0.9 ×`` the median tensor size (``group_fraction``); ``server_lr=10``, ``clip_norm=10``, constant server lr
(``server_lr_schedule="linear"|"cosine"`` are the released alternatives, from ``server_lr`` to
``server_lr_min`` over ``rounds``), ``server_momentum`` 0 (the released script; its parser default is 0.9),
equal client weights, ``n_accum=4``, ``lr=1e-4``, ``local_steps=40``, ``K=200`` as in ``scripts/ferret.sh``.
Seeds are drawn from seeded generators, not the global ``random``/``torch`` state.
"""

from __future__ import annotations

import math
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
    candidate_seeds,
    catch_up,
    check_float,
    check_initial_weights,
    check_int,
    client_seed,
    log,
    tensor_digest,
)
from .local import OptimizerFactory, local_sgd, sgd_factory
from .messages import MalformedMessage, Value, field, index_dtype

BASES = ("truncated", "unbiased")
SCHEDULES = ("constant", "linear", "cosine")


def group_tensors(numels: list[int], fraction: float = 0.9) -> list[list[int]]:
    """The released grouping: consecutive tensors, a new group once adding one would pass
    ``fraction × median`` elements (a tensor larger than that forms its own group)."""
    target = int(fraction * float(np.median(numels)))
    groups: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i, n in enumerate(numels):
        if size + n > target and current:
            groups.append(current)
            current, size = [], 0
        current.append(i)
        size += n
    if current:
        groups.append(current)
    return groups


def truncated_variance(a: float) -> float:
    """Variance of a standard normal truncated to ``[-a, a]``: ``1 - 2 a φ(a) / (2 Φ(a) - 1)``."""
    if a < 1e-3:  # the series a²/3 - 2a⁴/45 + 2a⁶/945 (the closed form cancels catastrophically here)
        return a * a / 3.0 - 2.0 * a ** 4 / 45.0 + 2.0 * a ** 6 / 945.0
    phi = math.exp(-a * a / 2.0) / math.sqrt(2.0 * math.pi)
    return 1.0 - 2.0 * a * phi / math.erf(a / math.sqrt(2.0))


def basis(seed: int, d: int, kind: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """The random basis vector of ``seed`` for a group of ``d`` elements (see the module doc)."""
    gen = generator if generator is not None else torch.Generator(device=device)
    gen.manual_seed(int(seed))
    bound = d ** -0.5
    b = torch.empty(d, device=device, dtype=dtype)
    torch.nn.init.trunc_normal_(b, mean=0.0, std=1.0, a=-bound, b=bound, generator=gen)
    if kind == "unbiased":
        b.mul_(1.0 / math.sqrt(d * truncated_variance(bound)))
    return b


@dataclass
class Ferret(FedMethod):
    """Ferret (see the module doc for every option and which are the released defaults)."""

    num_seeds: int = 200
    lr: float = 1e-4
    local_steps: int = 40
    n_accum: int = 4
    grad_clip: float | None = None
    weight_decay: float = 0.0
    optimizer: OptimizerFactory | None = None
    server_lr: float = 10.0
    server_lr_min: float = 0.0
    server_lr_schedule: str = "constant"
    rounds: int | None = None
    clip_norm: float | None = 10.0
    server_momentum: float = 0.0
    basis: str = "truncated"
    group_fraction: float = 0.9
    min_seeds: int = 2
    equal_weight: bool = True
    seed: int = 0

    name = "ferret"

    def __post_init__(self) -> None:
        check_int("num_seeds", self.num_seeds, 1)
        check_float("lr", self.lr)
        check_int("local_steps", self.local_steps, 1)
        check_int("n_accum", self.n_accum, 1)
        if self.grad_clip is not None:
            check_float("grad_clip", self.grad_clip)
        check_float("weight_decay", self.weight_decay, strict=False)
        check_float("server_lr", self.server_lr)
        check_float("server_lr_min", self.server_lr_min, strict=False)
        if self.server_lr_schedule not in SCHEDULES:
            raise ValueError(f"server_lr_schedule must be one of {SCHEDULES}, got {self.server_lr_schedule!r}")
        if self.server_lr_schedule != "constant" and self.rounds is None:
            raise ValueError("an annealed server lr needs rounds= (the number of rounds it anneals over)")
        if self.rounds is not None:
            check_int("rounds", self.rounds, 1)
        if self.clip_norm is not None:
            check_float("clip_norm", self.clip_norm)
        if not 0.0 <= self.server_momentum < 1.0:
            raise ValueError(f"server_momentum must be in [0, 1), got {self.server_momentum!r}")
        if self.basis not in BASES:
            raise ValueError(f"basis must be one of {BASES}, got {self.basis!r}")
        check_float("group_fraction", self.group_fraction)
        check_int("min_seeds", self.min_seeds, 1)
        if self.min_seeds > self.num_seeds:
            raise ValueError(f"min_seeds ({self.min_seeds}) cannot exceed num_seeds ({self.num_seeds})")
        check_int("seed", self.seed, 0)
        self._pool: np.ndarray | None = None

    @property
    def pool(self) -> np.ndarray:
        if self._pool is None:
            self._pool = candidate_seeds(self.num_seeds, self.seed)
        return self._pool

    def make_optimizer(self) -> OptimizerFactory:
        return self.optimizer if self.optimizer is not None else sgd_factory(self.lr, self.weight_decay)

    def round_server_lr(self, round: int) -> float:
        """The released schedules, evaluated at ``round - 1`` of ``rounds``."""
        if self.server_lr_schedule == "constant":
            return self.server_lr
        r, total, hi, lo = round - 1, self.rounds, self.server_lr, self.server_lr_min
        assert total is not None
        if self.server_lr_schedule == "linear":
            return lo + (hi - lo) * (1 - r / total)
        return lo + (hi - lo) * (1 + math.cos(math.pi * r / total)) / 2

    def groups(self, params: list[torch.Tensor]) -> list[list[int]]:
        return group_tensors([p.numel() for p in params], self.group_fraction)

    # ------------------------------------------------------------------ projection and reconstruction
    def project(self, deltas: list[torch.Tensor], groups: list[list[int]], rng: np.random.Generator
                ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per group, ``(seed indices, coordinates)`` of ``Δ`` (the released ``project_update``)."""
        flat = [torch.cat([deltas[i].detach().reshape(-1) for i in g]) for g in groups]
        norms = [float(f.norm()) for f in flat]
        top = max([1e-8] + [n for n in norms if math.isfinite(n)])
        gen = torch.Generator(device=flat[0].device)
        out = []
        for f, n in zip(flat, norms):
            k = max(int(n / top * self.num_seeds), self.min_seeds) if math.isfinite(n) else self.min_seeds
            k = min(k, self.num_seeds)
            chosen = np.sort(rng.choice(self.num_seeds, size=k, replace=False))
            d = f.numel()
            with torch.no_grad():
                coords = torch.stack([torch.sum(f * basis(self.pool[i], d, self.basis, f.device, f.dtype, gen))
                                      for i in chosen.tolist()]) * (d / k)
            out.append((chosen, coords.to(torch.float32).cpu().numpy()))
        return out

    def reconstruct_(self, params: list[torch.Tensor], groups: list[list[int]], indices: np.ndarray,
                     group_ids: np.ndarray, values: np.ndarray, server_lr: float) -> None:
        """``w -= lr_s clip(c b)`` for each (index, group, coordinate) triple, in the order given."""
        gen = torch.Generator(device=params[0].device)
        sizes = [sum(params[i].numel() for i in g) for g in groups]
        with torch.no_grad():
            for k, g, c in zip(indices.tolist(), group_ids.tolist(), values.tolist()):
                ref = params[groups[g][0]]
                b = basis(self.pool[k], sizes[g], self.basis, ref.device, ref.dtype, gen)
                b.mul_(c)
                if not bool(torch.isfinite(b).all()):
                    continue  # released: a non-finite term is skipped
                if self.clip_norm is not None:  # in the tensor's dtype, as released
                    coef = self.clip_norm / (torch.linalg.norm(b) + 1e-8)
                    if coef < 1:
                        b.mul_(coef)
                start = 0
                for i in groups[g]:
                    p = params[i]
                    p.sub_(server_lr * b[start:start + p.numel()].view_as(p))
                    start += p.numel()

    # ------------------------------------------------------------------ the two sides
    def new_server(self, params: list[torch.Tensor], names: list[str]) -> FerretServer:
        return FerretServer(self, params, names)

    def train_client(self, message: dict[str, Value], state: ClientState, work: ClientWork, client_id: Any
                     ) -> tuple[dict[str, Value], ClientState]:
        self.check_fingerprint(message, "the server's message")
        r = field(message, "round", int)
        state = self._catch_up(message, state, r)
        work.load(state.params)
        seed = client_seed(self.seed, r, client_id)
        stats = local_sgd(work, self.local_steps, mix_seed(seed, 1), self.make_optimizer(), self.n_accum,
                          self.grad_clip)
        deltas = [(a - b.detach()) for a, b in zip(state.params, work.params)]
        groups = self.groups(work.params)
        parts = self.project(deltas, groups, np.random.default_rng(mix_seed(seed, 2)))
        idt = index_dtype(self.num_seeds)
        reply: dict[str, Value] = {"round": r, "synced_round": state.synced_round, "fingerprint": self.fingerprint(),
                                   "n_examples": len(work.data), "num_groups": len(groups),
                                   "train_loss": float(stats["loss"])}
        for g, (idx, val) in enumerate(parts):
            reply[f"g{g}_idx"] = idx.astype(idt)
            reply[f"g{g}_val"] = val.astype(np.float32)
        return reply, state

    def _catch_up(self, message: dict[str, Value], state: ClientState, r: int) -> ClientState:
        check_initial_weights(message, state)
        params = [p.clone() for p in state.params]
        synced = state.synced_round
        groups = self.groups(params)
        rounds = field(message, "upd_rounds", np.ndarray)
        lrs = field(message, "upd_lr", np.ndarray)
        counts = field(message, "upd_counts", np.ndarray)
        idx = field(message, "upd_idx", np.ndarray)
        grp = field(message, "upd_grp", np.ndarray)
        val = field(message, "upd_val", np.ndarray)
        if not (len(rounds) == len(lrs) == len(counts)) or not (int(counts.sum()) == len(idx) == len(grp) == len(val)):
            raise MalformedMessage("the server's round updates have inconsistent lengths")
        if len(idx) and (int(idx.max()) >= self.num_seeds or int(grp.max()) >= len(groups)):
            raise MalformedMessage("the server's round updates name a seed or group that does not exist")
        starts = np.concatenate([[0], np.cumsum(counts.astype(np.int64))])

        def apply(k: int, u: int) -> None:
            s, e = starts[k], starts[k + 1]
            self.reconstruct_(params, groups, idx[s:e], grp[s:e], val[s:e], float(lrs[k]))

        synced = catch_up(rounds, synced, r - 1, apply)
        return ClientState(params, synced)


class FerretServer(FedServer):
    """The global model, the coordinate buffer (momentum) and the per-round coordinate history."""

    def __init__(self, method: Ferret, params: list[torch.Tensor], names: list[str]) -> None:
        self.method = method
        self.names = list(names)
        self.params = [p.detach().clone() for p in params]
        self.w0_digest = tensor_digest(self.params)
        self.groups = method.groups(self.params)
        self.round = 0
        self.buffer = np.zeros((method.num_seeds, len(self.groups)))
        self.history: list[tuple[int, float, np.ndarray, np.ndarray, np.ndarray]] = []
        self.synced: dict[Any, int] = {}

    def configure(self, round: int, client_id: Any) -> dict[str, Value]:
        m = self.method
        if round != self.round + 1:
            raise ValueError(f"the server is after round {self.round}; it can configure round {self.round + 1}")
        have = self.synced.get(client_id, 0)
        pending = [h for h in self.history if h[0] > have]
        idt = index_dtype(m.num_seeds)
        cat = lambda j, dt: np.concatenate([h[j] for h in pending]).astype(dt) if pending else np.zeros(0, dt)  # noqa: E731
        return {"round": round, "fingerprint": m.fingerprint(), "w0_digest": self.w0_digest,
                "upd_rounds": np.asarray([h[0] for h in pending], dtype=np.int32),
                "upd_lr": np.asarray([h[1] for h in pending], dtype=np.float64),
                "upd_counts": np.asarray([len(h[2]) for h in pending], dtype=np.uint32),
                "upd_idx": cat(2, idt), "upd_grp": cat(3, np.uint16), "upd_val": cat(4, np.float32)}

    def _read_reply(self, reply: dict[str, Value], round: int) -> list[tuple[np.ndarray, np.ndarray]]:
        m = self.method
        m.check_fingerprint(reply, "the reply")
        check_round(reply, round, "the reply")
        n = field(reply, "n_examples", int, "the reply")
        if n < 1:
            raise MalformedMessage(f"n_examples must be >= 1, got {n}")
        ng = field(reply, "num_groups", int, "the reply")
        if ng != len(self.groups):
            raise MalformedMessage(f"{ng} parameter groups, the model has {len(self.groups)}")
        parts = []
        for g in range(ng):
            idx = field(reply, f"g{g}_idx", np.ndarray, "the reply")
            val = field(reply, f"g{g}_val", np.ndarray, "the reply")
            if idx.ndim != 1 or idx.shape != val.shape or idx.dtype.kind not in "ui":
                raise MalformedMessage(f"group {g}: seed indices and coordinates do not pair up")
            if len(idx) and int(idx.max()) >= m.num_seeds:
                raise MalformedMessage(f"group {g}: seed index {int(idx.max())} is outside the pool of {m.num_seeds}")
            if len(np.unique(idx)) != len(idx):
                raise MalformedMessage(f"group {g}: a seed index is repeated")
            if not np.all(np.isfinite(val)):
                raise MalformedMessage(f"group {g}: {int((~np.isfinite(val)).sum())} coordinates are not finite")
            parts.append((idx.astype(np.int64), val.astype(np.float64)))
        return parts

    def aggregate(self, round: int, replies: dict[Any, dict[str, Value]]) -> RoundOutcome:
        m = self.method
        if round != self.round + 1:
            raise ValueError(f"round {round} cannot be aggregated after round {self.round}")
        out = RoundOutcome(round)
        good: dict[Any, list[tuple[np.ndarray, np.ndarray]]] = {}
        sizes: dict[Any, int] = {}
        for cid, reply in replies.items():
            synced = reply.get("synced_round")
            if isinstance(synced, int) and 0 <= synced < round:
                self.synced[cid] = synced
            try:
                good[cid] = self._read_reply(reply, round)
                sizes[cid] = int(reply["n_examples"])
                out.accepted.append(cid)
            except MalformedMessage as exc:
                self.reject(out, cid, str(exc))
        weights = aggregation_weights(sizes, m.equal_weight)
        self.buffer *= m.server_momentum
        for cid, parts in good.items():
            for g, (idx, val) in enumerate(parts):
                self.buffer[idx, g] += weights[cid] * val
        k_idx, g_idx = np.nonzero(self.buffer)  # row-major: pool order, then group order (as released)
        values = self.buffer[k_idx, g_idx].astype(np.float32)
        keep = values != 0
        k_idx, g_idx, values = k_idx[keep], g_idx[keep], values[keep]
        lr = m.round_server_lr(round)
        m.reconstruct_(self.params, self.groups, k_idx, g_idx, values, lr)
        self.history.append((round, lr, k_idx, g_idx, values))
        self.round = round
        if not good:
            log.warning("round %d: no valid reply; the global model is unchanged", round)
        out.details = {"coordinates": int(len(values)), "server_lr": lr}
        return out


def reconstruction_error(delta: torch.Tensor, num_seeds: int, kind: str = "truncated", trials: int = 1,
                         seed: int = 0, server_lr: float = 1.0, clip_norm: float | None = None
                         ) -> dict[str, float]:
    """Project one flat update ``delta`` on ``num_seeds`` bases and reconstruct it, ``trials`` times.

    Returns the mean of ``<Δ̂, Δ>/||Δ||²`` (the fraction of the update recovered, 1 when unbiased) and the
    mean relative squared error ``||Δ̂ - Δ||² / ||Δ||²`` of the server step ``Δ̂ = lr_s Σ clip(c b)``.
    """
    d = delta.numel()
    flat = delta.reshape(-1).to(torch.float32)
    gen = torch.Generator()
    gains, errors = [], []
    sq = float(flat.double().pow(2).sum())
    for t in range(trials):
        pool = candidate_seeds(num_seeds, mix_seed(seed, t))
        rec = torch.zeros(d, dtype=torch.float64)
        for s in pool.tolist():
            b = basis(s, d, kind, generator=gen)
            term = (torch.sum(flat * b) * (d / num_seeds)) * b
            if clip_norm is not None:
                coef = clip_norm / (float(torch.linalg.norm(term)) + 1e-8)
                if coef < 1:
                    term = term * coef
            rec += server_lr * term.double()
        gains.append(float(rec @ flat.double()) / sq)
        errors.append(float((rec - flat.double()).pow(2).sum()) / sq)
    return {"recovered_fraction": float(np.mean(gains)), "relative_squared_error": float(np.mean(errors)),
            "trials": float(trials)}
