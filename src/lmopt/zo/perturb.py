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

from lmopt._compile import _compiler_available, compiled

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

    def by_chunk(self) -> dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]:
        """The entries keyed by ``(tensor_index, chunk start)`` (one entry per chunk at most)."""
        return {(ti, start): (idx, vals) for ti, start, idx, vals in self.entries}

    @property
    def nbytes(self) -> int:
        return sum(idx.numel() * idx.element_size() + v.numel() * v.element_size()
                   for _, _, idx, v in self.entries)


def _perturb_kernel(seg: torch.Tensor, z: torch.Tensor, scale: torch.Tensor, mask: torch.Tensor,
                    saved: torch.Tensor) -> None:
    """``seg += scale * z`` rounded once to ``seg``'s dtype, marking in ``mask`` (1.0, in the compute dtype:
    a bool store does not vectorise on CPU) and copying into ``saved`` the elements whose value the restore
    below would not give back bit for bit."""
    cdt = torch.float64 if seg.dtype == torch.float64 else torch.float32
    delta = z.to(cdt) * scale.to(cdt)
    new = (seg.to(cdt) + delta).to(seg.dtype)
    back = (new.to(cdt) - delta).to(seg.dtype)
    bad = back != seg
    mask.copy_(bad.to(cdt))
    saved.copy_(torch.where(bad, seg, torch.zeros_like(seg)))
    seg.copy_(new)


def _shift_kernel(seg: torch.Tensor, z: torch.Tensor, scale: torch.Tensor) -> None:
    """``seg += scale * z`` without a log (the restore's subtraction, and MeZO's drifting arithmetic)."""
    cdt = torch.float64 if seg.dtype == torch.float64 else torch.float32
    seg.copy_((seg.to(cdt) + z.to(cdt) * scale.to(cdt)).to(seg.dtype))


def _kernel(fn, seg: torch.Tensor):
    """One fused kernel per signature when torch.compile works on ``seg``'s device, else eager (the same
    expressions, so a process always restores with the arithmetic it perturbed with)."""
    if _compiler_available(seg.device.type) is not None:
        return fn
    # every intermediate cast must round as eagerly, or the log would miss elements of bf16/fp16 tensors
    low = seg.dtype not in (torch.float32, torch.float64)
    cfn = compiled(fn, ("zo", seg.dtype, seg.device.type), {"emulate_precision_casts": True} if low else None)

    def run(*args):
        # detached aliases: chunks are views of parameters of every rank and size, and dynamo would guard
        # (and recompile) on each view's base tensor
        return cfn(*(a.detach() if isinstance(a, torch.Tensor) else a for a in args))

    return run


def _scalar(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64)


def perturb_chunk_(seg: torch.Tensor, z: torch.Tensor, scale: float, ws, exact: bool
                   ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Perturb one chunk; with ``exact`` return ``(indices, original values)`` of the elements to write back."""
    if not exact:  # MeZO's arithmetic, eagerly (a compiled kernel could contract it into an FMA)
        _shift_kernel(seg, z, _scalar(scale))
        return None
    n, dev = seg.numel(), seg.device
    mask = ws.get("mask", n, compute_dtype(seg.dtype), dev)
    saved = ws.get("saved", n, seg.dtype, dev)
    _kernel(_perturb_kernel, seg)(seg, z, _scalar(scale), mask, saved)
    bad = mask.nonzero().view(-1)
    if not bad.numel():
        return None
    return (bad.to(torch.int32) if n < 2**31 else bad), saved[bad]


def restore_chunk_(seg: torch.Tensor, z: torch.Tensor, scale: float,
                   entry: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    """Undo :func:`perturb_chunk_` on one chunk: subtract, then write back the logged originals."""
    _kernel(_shift_kernel, seg)(seg, z, _scalar(-scale))
    if entry is not None:
        seg.index_copy_(0, entry[0].long(), entry[1])


def perturb_(tensors: Sequence[tuple[int, torch.Tensor]], seed: int, scale: float, sampler: DirectionSampler,
             exact: bool = True) -> RestoreLog | None:
    """``theta += scale * z(seed)`` in place for every ``(tensor_index, tensor)``.

    With ``exact`` it returns the :class:`RestoreLog` needed by :func:`restore_`. Scratch memory: a few
    chunk-sized buffers, reused across chunks and steps.
    """
    log = RestoreLog() if exact else None
    for ti, p in tensors:
        flat = flat_view(p)
        for ci, start, end in chunk_bounds(flat.numel(), sampler.chunk_size):
            z = sampler.chunk_into(seed, ti, ci, end - start, flat.device)
            entry = perturb_chunk_(flat[start:end], z, scale, sampler.workspace, exact)
            if entry is not None and log is not None:
                log.entries.append((ti, start, *entry))
    return log


def restore_(tensors: Sequence[tuple[int, torch.Tensor]], seed: int, scale: float, sampler: DirectionSampler,
             log: RestoreLog | None) -> None:
    """Undo :func:`perturb_` (bit-exact when ``log`` comes from an ``exact`` perturbation)."""
    entries = log.by_chunk() if log is not None else {}
    for ti, p in tensors:
        flat = flat_view(p)
        for ci, start, end in chunk_bounds(flat.numel(), sampler.chunk_size):
            z = sampler.chunk_into(seed, ti, ci, end - start, flat.device)
            restore_chunk_(flat[start:end], z, scale, entries.get((ti, start)))


def swap_perturbation_(tensors: Sequence[tuple[int, torch.Tensor]], seed: int, scale: float,
                       new_scale: float, sampler: DirectionSampler, log: RestoreLog) -> RestoreLog:
    """Restore ``+scale * z(seed)`` and apply ``new_scale * z(seed)`` in one pass (MeZO's ``theta + mu z`` →
    ``theta - mu z``): each chunk of ``z`` is generated once for both. Exact; returns the new log."""
    entries = log.by_chunk()
    new_log = RestoreLog()
    for ti, p in tensors:
        flat = flat_view(p)
        for ci, start, end in chunk_bounds(flat.numel(), sampler.chunk_size):
            seg = flat[start:end]
            z = sampler.chunk_into(seed, ti, ci, end - start, flat.device)
            restore_chunk_(seg, z, scale, entries.get((ti, start)))
            entry = perturb_chunk_(seg, z, new_scale, sampler.workspace, True)
            if entry is not None:
                new_log.entries.append((ti, start, *entry))
    return new_log
