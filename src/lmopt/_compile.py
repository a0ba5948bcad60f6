"""torch.compile helpers shared by lmopt's fast paths (first-order optimizer kernels, zeroth-order
perturbation kernels): whether a compiler works on a device, and compiled functions cached per argument
signature, each with its own recompilation budget."""

from __future__ import annotations

import functools
import shutil
import types
from collections.abc import Callable
from typing import Any

import torch

_COMPILED: dict[tuple[Any, ...], Callable[..., Any]] = {}


@functools.cache
def _compiler_available(device_type: str) -> str | None:
    """Return None when torch.compile can build kernels for ``device_type``, else the reason."""
    if not hasattr(torch, "compile"):
        return "torch.compile is not available in this torch build"
    if device_type == "cpu":
        if shutil.which("g++") is None and shutil.which("c++") is None and shutil.which("clang++") is None:
            return "no C++ compiler (g++/clang++) on PATH for torch.compile's CPU backend"
        return None
    if device_type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "triton is not installed"
        return None
    return f"torch.compile path not validated on device type {device_type!r}"


def _signature(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """What a compiled kernel is specialised on: tensor dtypes, ranks and devices, and plain-value arguments.

    Shapes are left out (the kernels are compiled with dynamic shapes), so every matrix shape of one rank
    shares a kernel; 0-d tensors (the scalar coefficients) are data, not part of the signature.
    """
    sig: list[Any] = []
    for a in args:
        if isinstance(a, torch.Tensor):
            sig.append(("T", a.dtype, a.ndim, a.device.type) if a.ndim > 0 else ("S", a.dtype))
        elif a is None or isinstance(a, (bool, int, float, str)):
            sig.append(a)
        else:
            sig.append(type(a).__name__)
    return tuple(sig)


def _fresh_function(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A copy of ``fn`` with its own code object.

    torch._dynamo counts recompilations per code object and gives up after ``recompile_limit`` (8). One copy
    per signature gives each dtype/kernel/rank combination its own budget, so an optimizer over many dtypes
    or kernels never exhausts a limit that another combination then inherits.
    """
    code = fn.__code__.replace()
    copy = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    copy.__qualname__ = fn.__qualname__
    return copy


def compiled(fn: Callable[..., Any], signature: tuple[Any, ...] = (),
             options: dict[str, Any] | None = None) -> Callable[..., Any]:
    """``torch.compile`` of a per-tensor maths function for one argument signature, built once and cached.

    ``options`` are Inductor settings for this function only (e.g. ``emulate_precision_casts``, which
    rounds every intermediate bf16/fp16 cast as eager does: bit-exact schemes need it).
    """
    key = (fn, signature)
    cfn = _COMPILED.get(key)
    if cfn is None:
        cfn = torch.compile(_fresh_function(fn), fullgraph=True, dynamic=True, options=options)
        _COMPILED[key] = cfn
    return cfn
