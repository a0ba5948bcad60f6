"""Random directions regenerated from integer seeds.

A zeroth-order step never stores a direction vector: it stores an integer seed and regenerates the
direction, tensor by tensor and chunk by chunk, whenever it is needed (perturb, restore, update). This is
the memory trick of MeZO (arXiv 2305.17333, Algorithm 1), made independent of the global RNG: every chunk
has its own seed derived from ``(direction seed, tensor index, chunk index)`` and is drawn from a
device-local :class:`torch.Generator`, so

* the user's global RNG stream is never read or written (MeZO's ``torch.manual_seed`` clobbers it);
* any chunk of any direction can be regenerated on its own, in any order, with one chunk of memory;
* results do not depend on how many other tensors there are or in which order they are visited.

Direction kinds:

* ``"gaussian"``: standard Gaussian ``z ~ N(0, I)`` from ``torch.randn`` (MeZO's stream, the default);
* ``"sphere"``: uniform on the unit sphere ``u = z / ||z||``; the norm runs over *all* perturbed tensors
  (one direction for the whole parameter vector, not one per tensor — the block-coordinate variant of the
  R-AdaZO reference code is a known defect);
* ``"rademacher"``: ``z_i = ±1`` with equal probability (``E[z zᵀ] = I``, so every estimator keeps its
  expectation); ``"gaussian-counter"``: Gaussian by Box–Muller. Both come from a *counter-based* generator:
  element ``i`` of tensor ``t`` is a hash of ``(seed, t, i)``, computed by one compiled kernel with no
  generator state, several times faster than ``torch.randn`` on a CPU and independent of the chunk size.
  Rademacher values are exact integers, identical on every machine; the counter Gaussian is identical within
  a process (perturb, restore and update agree bit for bit) but its last bits may differ between builds,
  since log/cos come from the compiler's vector math library.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch

_MASK64 = (1 << 64) - 1
DIRECTION_KINDS = ("gaussian", "sphere", "rademacher", "gaussian-counter")
COUNTER_KINDS = ("rademacher", "gaussian-counter")
_M32 = 0xFFFFFFFF
DEFAULT_CHUNK = 1 << 20


def mix_seed(*parts: int) -> int:
    """Hash integers into a 63-bit seed (SplitMix64 finaliser applied per part).

    >>> mix_seed(0, 1) == mix_seed(0, 1) and mix_seed(0, 1) != mix_seed(1, 0)
    True
    """
    h = 0x243F6A8885A308D3
    for part in parts:
        h = (h ^ (int(part) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h & ((1 << 63) - 1)


def chunk_bounds(numel: int, chunk_size: int) -> Iterator[tuple[int, int, int]]:
    """Yield ``(chunk_index, start, end)`` covering ``range(numel)``."""
    for ci, start in enumerate(range(0, numel, chunk_size)):
        yield ci, start, min(start + chunk_size, numel)


class Workspace:
    """Reusable scratch buffers (at most one chunk each), so that a step allocates nothing per chunk."""

    def __init__(self) -> None:
        self._bufs: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def get(self, name: str, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (name, dtype, torch.device(device))
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < n:
            buf = torch.empty(n, dtype=dtype, device=device)
            self._bufs[key] = buf
        return buf[:n]


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (xorshift-multiply, after C. Wellons' lowbias32) on int64 tensors holding
    values < 2³²; both multipliers are < 2³¹ so no product leaves int64."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x68E31DA5) & _M32
    return x ^ (x >> 16)


def _counter_bits(index: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor) -> torch.Tensor:
    """32 random bits per element index: a Weyl step keyed by ``k1`` (odd multiplier < 2³¹), two hash rounds
    with ``k2`` between them, so tensors with different keys get unrelated streams."""
    return _hash32(_hash32((index * 0x61C88647 + k1) & _M32) ^ k2)


def counter_fill(out: torch.Tensor, start: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor,
                 gaussian: bool) -> None:
    """Write elements ``start .. start + len(out)`` of a counter-based direction into the fp32 ``out``."""
    i = torch.arange(out.numel(), dtype=torch.int64, device=out.device) + start
    if gaussian:  # Box–Muller from two independent 32-bit uniforms per element
        u1 = (_counter_bits(2 * i, k1, k2).to(torch.float32) + 1.0) * (1.0 / 4294967296.0)
        u2 = _counter_bits(2 * i + 1, k1, k2).to(torch.float32) * (1.0 / 4294967296.0)
        out.copy_(torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2))
    else:
        out.copy_((_counter_bits(i, k1, k2) & 1).to(torch.float32) * 2.0 - 1.0)


_COUNTER_KERNEL: dict[str, Any] = {}


def _counter_kernel(device: torch.device) -> Any:
    """``counter_fill`` compiled into one kernel when torch.compile works here, else eager (same integers;
    the Gaussian's log/cos may differ in the last bit between the two, so one process uses one of them)."""
    kernel = _COUNTER_KERNEL.get(device.type)
    if kernel is None:
        from lmopt._compile import _compiler_available

        kernel = counter_fill
        if _compiler_available(device.type) is None:
            kernel = torch.compile(counter_fill, fullgraph=True, dynamic=True)
        _COUNTER_KERNEL[device.type] = kernel
    return kernel


class DirectionSampler:
    """Regenerates chunks of a random direction from ``(seed, tensor_index, chunk_index)``.

    Args:
        kind: ``"gaussian"`` (``z ~ N(0, I)``), ``"sphere"`` (``z / ||z||`` over all tensors),
            ``"rademacher"`` (±1) or ``"gaussian-counter"`` (see the module doc).
        chunk_size: number of elements generated at once; the extra memory of a ZO step is one chunk.
    """

    def __init__(self, kind: str = "gaussian", chunk_size: int = DEFAULT_CHUNK) -> None:
        if kind not in DIRECTION_KINDS:
            raise ValueError(f"directions must be one of {DIRECTION_KINDS}, got {kind!r}")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        self.kind = kind
        self.chunk_size = chunk_size
        self._generators: dict[torch.device, torch.Generator] = {}
        self.workspace = Workspace()

    def _generator(self, device: torch.device) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = torch.Generator(device=device)
            self._generators[device] = gen
        return gen

    def _counter_into(self, out: torch.Tensor, seed: int, tensor_index: int, chunk_index: int) -> torch.Tensor:
        key = mix_seed(seed, tensor_index)
        as_t = lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731  (0-d: no recompiles)
        _counter_kernel(out.device)(out, as_t(chunk_index * self.chunk_size), as_t(key & _M32),
                                    as_t((key >> 32) & _M32), self.kind == "gaussian-counter")
        return out

    def chunk(self, seed: int, tensor_index: int, chunk_index: int, n: int, device: torch.device,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The raw values of one chunk (the sphere's normalisation is applied by the caller)."""
        if self.kind in COUNTER_KINDS:
            out = self._counter_into(torch.empty(n, dtype=torch.float32, device=device), seed, tensor_index,
                                     chunk_index)
            return out if dtype == torch.float32 else out.to(dtype)
        gen = self._generator(torch.device(device))
        gen.manual_seed(mix_seed(seed, tensor_index, chunk_index))
        return torch.randn(n, generator=gen, device=device, dtype=dtype)

    def chunk_into(self, seed: int, tensor_index: int, chunk_index: int, n: int, device: torch.device,
                   name: str = "z") -> torch.Tensor:
        """Like :meth:`chunk` but written into a reused fp32 workspace buffer (overwritten by the next call)."""
        out = self.workspace.get(name, n, torch.float32, device)
        if self.kind in COUNTER_KINDS:
            return self._counter_into(out, seed, tensor_index, chunk_index)
        gen = self._generator(torch.device(device))
        gen.manual_seed(mix_seed(seed, tensor_index, chunk_index))
        return torch.randn(n, generator=gen, out=out)

    def chunks(self, seed: int, tensor_index: int, numel: int, device: torch.device,
               dtype: torch.dtype = torch.float32) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield ``(start, end, z_chunk)`` for one tensor."""
        for ci, start, end in chunk_bounds(numel, self.chunk_size):
            yield start, end, self.chunk(seed, tensor_index, ci, end - start, device, dtype)

    def full(self, seed: int, tensor_index: int, shape: Sequence[int] | torch.Size, device: torch.device,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The whole raw Gaussian direction of one tensor (for tests and small problems)."""
        numel = 1
        for s in shape:
            numel *= int(s)
        parts = [z for _, _, z in self.chunks(seed, tensor_index, numel, device, dtype)]
        flat = torch.cat(parts) if parts else torch.empty(0, device=device, dtype=dtype)
        return flat.view(tuple(shape))

    def norm(self, seed: int, tensors: Sequence[tuple[int, torch.Tensor]]) -> float:
        """``||z||`` of the raw Gaussian over all ``(tensor_index, tensor)`` pairs (one chunk at a time)."""
        total = 0.0
        for ti, t in tensors:
            for _, _, z in self.chunks(seed, ti, t.numel(), t.device):
                total += float(torch.dot(z, z))
        return total ** 0.5
