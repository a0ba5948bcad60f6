"""In-place perturbation of parameters along a seeded direction, with exact restore.

``perturb_`` adds ``scale * z(seed)`` to every tensor, chunk by chunk; ``restore_`` brings the tensors back.
MeZO (arXiv 2305.17333, Algorithm 1) restores by adding ``+eps*z`` after ``+eps*z`` and ``-2*eps*z``: in
floating point that sequence does not return to the starting bits (MeZO issue #42), so the parameters drift
a little every step, badly so in fp16/bf16. Floating-point addition is not invertible in general (a small
weight next to a large perturbation loses its low bits), so no in-place scheme can be exact *and* store
nothing. This module stores the minimum: while perturbing a chunk it computes the candidate restore
``fl(fl(theta + delta) - delta)`` and keeps ``(index, original value)`` only for the elements where that
candidate is wrong. Restore subtracts ``delta`` and writes those few originals back, which is bit-exact in
every dtype. The log is small (a few percent of the elements in fp32; measured by ``benchmarks.zo_memory``)
and its size is reported by :attr:`RestoreLog.numel`.

Arithmetic is done in fp32 for fp16/bf16 tensors (fp64 for fp64 tensors) and rounded once to the
parameter's dtype.

``mode="mezo"`` reproduces MeZO's arithmetic literally (``+eps``, ``-2 eps``, ``+eps`` with no log) for
bit-for-bit comparisons with the reference; it drifts as MeZO does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .directions import DirectionSampler, chunk_bounds

PERTURB_MODES = ("exact", "mezo")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def flat_view(p: torch.Tensor) -> torch.Tensor:
    data = p.data if isinstance(p, torch.nn.Parameter) else p.detach()
    if not data.is_contiguous():
        raise ValueError(
            f"zeroth-order perturbation needs contiguous parameters; got a tensor of shape {tuple(p.shape)} "
            f"with strides {data.stride()}: make it contiguous (p.data = p.data.contiguous()) before "
            "building the optimizer"
        )
    return data.view(-1)


@dataclass
class RestoreLog:
    """Elements whose bits cannot be recovered by subtraction: ``(tensor_index, start, idx, values)``."""

    entries: list[tuple[int, int, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return sum(int(idx.numel()) for _, _, idx, _ in self.entries)

    @property
    def nbytes(self) -> int:
        return sum(idx.numel() * idx.element_size() + v.numel() * v.element_size()
                   for _, _, idx, v in self.entries)


def _delta_into(sampler: DirectionSampler, seed: int, ti: int, ci: int, n: int, scale: float,
                cdt: torch.dtype, device: torch.device) -> torch.Tensor:
    """``scale * z`` of one chunk in the compute dtype, in a reused buffer."""
    z = sampler.chunk_into(seed, ti, ci, n, device)
    if cdt != torch.float32:
        z = z.to(cdt)
    return z.mul_(scale)


def perturb_(tensors: Sequence[tuple[int, torch.Tensor]], seed: int, scale: float, sampler: DirectionSampler,
             exact: bool = True) -> RestoreLog | None:
    """``theta += scale * z(seed)`` in place for every ``(tensor_index, tensor)``.

    With ``exact`` it returns the :class:`RestoreLog` needed by :func:`restore_`. Scratch memory: a few
    chunk-sized buffers, reused across chunks and steps.
    """
    log = RestoreLog() if exact else None
    ws = sampler.workspace
    for ti, p in tensors:
        flat = flat_view(p)
        cdt = compute_dtype(flat.dtype)
        low = flat.dtype != cdt
        dev = flat.device
        for ci, start, end in chunk_bounds(flat.numel(), sampler.chunk_size):
            n = end - start
            seg = flat[start:end]
            delta = _delta_into(sampler, seed, ti, ci, n, scale, cdt, dev)
            if low:
                orig = ws.get("orig", n, cdt, dev).copy_(seg)
                new = ws.get("new_lp", n, flat.dtype, dev).copy_(torch.add(orig, delta, out=orig))
            else:
                new = torch.add(seg, delta, out=ws.get("new", n, cdt, dev))
            if log is not None:
                if low:
                    back_c = ws.get("back", n, cdt, dev).copy_(new).sub_(delta)
                    back = ws.get("back_lp", n, flat.dtype, dev).copy_(back_c)
                else:
                    back = torch.sub(new, delta, out=ws.get("back", n, cdt, dev))
                mask = torch.ne(back, seg, out=ws.get("mask", n, torch.bool, dev))
                bad = mask.nonzero().view(-1)
                if bad.numel():
                    idx = bad.to(torch.int32) if n < 2**31 else bad
                    log.entries.append((ti, start, idx, seg[bad].clone()))
            seg.copy_(new)
    return log


def restore_(tensors: Sequence[tuple[int, torch.Tensor]], seed: int, scale: float, sampler: DirectionSampler,
             log: RestoreLog | None) -> None:
    """Undo :func:`perturb_` (bit-exact when ``log`` comes from an ``exact`` perturbation)."""
    ws = sampler.workspace
    for ti, p in tensors:
        flat = flat_view(p)
        cdt = compute_dtype(flat.dtype)
        dev = flat.device
        for ci, start, end in chunk_bounds(flat.numel(), sampler.chunk_size):
            n = end - start
            seg = flat[start:end]
            delta = _delta_into(sampler, seed, ti, ci, n, scale, cdt, dev)
            if flat.dtype == cdt:
                seg.sub_(delta)
            else:
                cur = ws.get("orig", n, cdt, dev).copy_(seg)
                seg.copy_(cur.sub_(delta))
    if log is not None:
        by_index = dict(tensors)
        for ti, start, idx, values in log.entries:
            flat = flat_view(by_index[ti])
            flat[start:].index_copy_(0, idx.long(), values)
