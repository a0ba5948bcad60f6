"""Shared machinery of lmopt's first-order optimizers.

Every optimizer follows the torch.optim shape: a class holding param groups and per-parameter state, whose
``step`` gathers (param, grad, state) and hands them to an implementation of the maths. The maths of one
tensor is written once, as a plain function of tensors and scalar coefficients (the *reference*); the fast
path runs the very same function through ``torch.compile`` (one fused kernel per tensor: C++/OpenMP on CPU,
Triton on GPU), with every scalar passed as a 0-d tensor so that a changing learning rate never triggers a
recompile. Matrix optimizers (Muon, SOAP, APOLLO) add their own batched paths. ``impl="auto"`` picks the
compiled path when ``torch.compile`` works on the parameters' device and the reference otherwise; both are
always available through ``impl="reference"`` / ``impl="compiled"``.

Conventions shared by all optimizers here:

* ``p.grad`` is never written; ``maximize=True`` negates a copy (inside the kernel).
* ``state["step"]`` is a CPU int64 tensor: bias corrections are computed on the host from it without a
  device synchronisation, and it counts exactly past 2²⁴ steps (where torch.optim's float32 count freezes,
  which would stop SOAP's and APOLLO's periodic refreshes). A float step from an older checkpoint is loaded
  as int64.
* moments are stored in ``state_dtype`` (default: the parameter's dtype; ``torch.bfloat16`` halves the
  state of fp32 models) and all arithmetic is done in fp32.
* sparse gradients are rejected with a message; parameters whose ``grad`` is None are skipped.
* sharded parameters (``torch.distributed`` DTensors, e.g. from FSDP2's ``fully_shard``): elementwise maths
  runs on each rank's local shard with sharded state; maths that needs whole tensors (Muon, SOAP, APOLLO,
  Lion-𝒦's ℓ2 kernel) gathers the parameter and gradient, updates the full tensor with state kept whole
  (replicated) on every rank, and writes each rank's shard back. Plain DDP needs nothing: every rank holds
  full parameters and all-reduced gradients.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch.optim import Optimizer

from lmopt._compile import _COMPILED, _compiler_available, _signature, compiled  # noqa: F401  (re-exported)

_IMPLS = ("auto", "reference", "compiled")
#: (function, signature) pairs whose compilation failed, with the reason; only those run the reference.
_COMPILE_FAILED: dict[tuple[Any, ...], str] = {}


def check_lr(lr: Any) -> None:
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise ValueError(f"Invalid learning rate: a tensor lr must have one element, got shape {tuple(lr.shape)}")
        lr = float(lr)
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"Invalid learning rate {lr!r}: lr must be a finite float >= 0 (e.g. 1e-3)")


def check_betas(betas: Any, n: int = 2, name: str = "betas") -> None:
    if not isinstance(betas, (tuple, list)) or len(betas) != n:
        raise ValueError(f"Invalid {name} {betas!r}: expected a tuple of {n} floats in [0, 1), e.g. (0.9, 0.999)")
    for i, b in enumerate(betas):
        if not isinstance(b, (int, float)) or not 0.0 <= float(b) < 1.0:
            raise ValueError(f"Invalid {name}[{i}] = {b!r}: each beta must be a float in [0, 1)")


def check_beta(beta: Any, name: str) -> None:
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not 0.0 <= float(beta) < 1.0:
        raise ValueError(f"Invalid {name} {beta!r}: must be a float in [0, 1)")


def check_nonneg(value: Any, name: str, example: str = "0.0") -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"Invalid {name} {value!r}: must be a finite float >= 0 (e.g. {example})")


def check_pos_int(value: Any, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"Invalid {name} {value!r}: must be an integer >= 1")


def check_state_dtype(dtype: Any) -> None:
    if dtype is not None and dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise ValueError(
            f"Invalid state_dtype {dtype!r}: use None (same as the parameter), torch.float32 or torch.bfloat16"
        )


def _plain(a: Any) -> Any:
    """A Parameter as a plain tensor over the same storage: dynamo keeps a Parameter's shape static (one
    compilation per shape), a plain tensor gets a symbolic shape."""
    return a.detach() if isinstance(a, torch.nn.Parameter) else a


@functools.lru_cache(maxsize=4096)
def _scalar_tensor(value: float, sign: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64)


def scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    """A float64 0-d CPU tensor: a kernel argument that does not trigger recompilation when it changes.

    Cached by value (kernels only read it), so a step allocates no small tensors per parameter: each
    distinct hyper-parameter value of a step is one tensor, shared by every parameter of its group.
    """
    value = float(value)
    return _scalar_tensor(value, math.copysign(1.0, value))


def _distinct_scalars(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Equal hyper-parameter values share one cached tensor; passing one tensor in two argument slots would
    make dynamo guard on (and recompile for) that aliasing, so a repeated one is passed as a copy."""
    seen: set[int] = set()
    out = []
    for a in args:
        if isinstance(a, torch.Tensor) and a.ndim == 0:
            if id(a) in seen:
                a = a.clone()
            seen.add(id(a))
        out.append(a)
    return tuple(out)


def _dense_flat(t: torch.Tensor) -> torch.Tensor | None:
    """A 1-D view over the elements of a dense, non-overlapping tensor (any permutation of dims)."""
    if t.is_contiguous():
        return t.view(-1)
    order = sorted(range(t.ndim), key=lambda d: t.stride(d))
    expected = 1
    for d in order:
        if t.shape[d] != 1 and t.stride(d) != expected:
            return None
        expected *= t.shape[d]
    return t.as_strided((t.numel(),), (1,), t.storage_offset())


def _flatten_args(args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    layout = None
    out = []
    for a in args:
        if isinstance(a, torch.Tensor) and a.ndim > 0:
            if layout is None:
                layout = (a.shape, a.stride())
            elif (a.shape, a.stride()) != layout:
                return None
            flat = _dense_flat(a)
            if flat is None:
                return None
            out.append(flat.detach())  # no view base: dynamo would guard on the base's rank and size
        else:
            out.append(a)
    return tuple(out)


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a torch.distributed DTensor (a sharded or replicated parameter)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed support
        return False
    return isinstance(t, DTensor)


def _local(a: Any) -> Any:
    return a.to_local() if is_dtensor(a) else a


def gather_full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor as a plain tensor on every rank (``t`` itself when it is not a DTensor)."""
    return t.full_tensor() if is_dtensor(t) else t


def write_shard(p: torch.Tensor, full: torch.Tensor) -> None:
    """Copy this rank's part of the updated whole tensor ``full`` into the DTensor ``p`` (no communication:
    every rank holds the same ``full`` and slices its own shard)."""
    if full is p:
        return
    from torch.distributed.tensor import distribute_tensor

    shard = distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local()
    p.to_local().copy_(shard)


class LmoptOptimizer(Optimizer):
    """Base class: validation, implementation choice, state dtype handling and state_dict round-trip."""

    #: state keys holding moments (stored in ``state_dtype``); others (step, seeds, matrices) are fixed.
    _moment_keys: tuple[str, ...] = ()
    #: state keys that must stay on the CPU (host-side counters and seeds).
    _cpu_keys: tuple[str, ...] = ("step",)

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any], impl: str = "auto") -> None:
        if impl not in _IMPLS:
            raise ValueError(f"Invalid impl {impl!r}: choose one of {_IMPLS}")
        self.impl = impl
        super().__init__(params, defaults)

    #: group keys accepted besides the defaults: torch's own and what LR schedulers add.
    _extra_group_keys: frozenset[str] = frozenset({"params", "name", "initial_lr"})
    #: hints for group keys that users bring from other implementations (key → what to use instead).
    _group_key_hints: dict[str, str] = {}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's ``add_param_group``, but a key this optimizer does not read is an error, not ignored."""
        if isinstance(param_group, dict):
            unknown = sorted(set(param_group) - set(self.defaults) - self._extra_group_keys)
            if unknown:
                hints = "; ".join(f"{k!r}: {self._group_key_hints[k]}" for k in unknown if k in self._group_key_hints)
                valid = ", ".join(sorted(set(self.defaults)))
                raise ValueError(
                    f"{type(self).__name__} param group has keys it does not use: {unknown} (they would be "
                    f"silently ignored). {hints + '. ' if hints else ''}Valid group keys: params, {valid}"
                )
        super().add_param_group(param_group)

    # -- helpers for subclasses ---------------------------------------------------------------------------
    def _use_compiled(self, device: torch.device) -> bool:
        if self.impl == "reference":
            return False
        reason = _compiler_available(device.type)
        if reason is None:
            return True
        if self.impl == "compiled":
            raise RuntimeError(f"impl='compiled' was requested but {reason}; use impl='reference' or 'auto'")
        return False

    def _run(self, fn: Callable[..., Any], device: torch.device, *args: Any, flat: bool = True) -> None:
        if any(is_dtensor(a) for a in args):
            if not flat:
                raise RuntimeError(f"{fn.__name__} needs whole tensors; gather DTensors with gather_full first")
            args = tuple(_local(a) for a in args)  # elementwise maths: each rank updates its own shard
        self._run_local(fn, device, *args, flat=flat)

    def _run_local(self, fn: Callable[..., Any], device: torch.device, *args: Any, flat: bool = True) -> None:
        """Run ``fn`` compiled when allowed, else eagerly (the reference).

        With ``flat`` (elementwise maths) every tensor argument that is not 0-d is viewed as 1-D over its
        storage when all of them share one dense layout, so that one compiled kernel serves every shape
        and stride; tensors with mismatched layouts run the reference. A compilation that fails (a broken
        toolchain, a graph dynamo cannot take) moves only that function and signature to the reference,
        with one warning; other kernels and other optimizers keep their compiled paths.
        """
        if self._use_compiled(device):
            run_args = _flatten_args(args) if flat else tuple(_plain(a) for a in args)
            if run_args is not None:
                run_args = _distinct_scalars(run_args)
            if run_args is None:  # mixed layouts: the reference handles any strides
                fn(*args)
                return
            key = (fn, _signature(run_args))
            if key not in _COMPILE_FAILED:
                try:
                    compiled(fn, key[1])(*run_args)
                    return
                except Exception as exc:  # fall back to identical eager maths for this kernel only
                    if self.impl == "compiled":
                        raise
                    _COMPILE_FAILED[key] = f"torch.compile failed ({type(exc).__name__}: {exc})"
                    warnings.warn(
                        f"{type(self).__name__}: {_COMPILE_FAILED[key]} for {fn.__name__}; this kernel uses "
                        "the reference implementation (same maths, slower)",
                        RuntimeWarning,
                        stacklevel=3,
                    )
        fn(*args)

    def _grad(self, p: torch.Tensor) -> torch.Tensor | None:
        g = p.grad
        if g is None:
            return None
        if g.is_sparse:
            raise RuntimeError(
                f"{type(self).__name__} does not support sparse gradients; use torch.optim.SparseAdam for "
                "sparse embeddings or build the embedding with sparse=False"
            )
        if torch.is_complex(p):
            raise RuntimeError(f"{type(self).__name__} does not support complex parameters; use torch.view_as_real")
        return g

    def _params_with_grads(self, group: dict[str, Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]:
        """(parameter, gradient, state) for every parameter of ``group`` that has a gradient."""
        for p in group["params"]:
            g = self._grad(p)
            if g is not None:
                yield p, g, self.state[p]

    def _whole_params_with_grads(self, group: dict[str, Any]
                                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]:
        """Like :meth:`_params_with_grads`, but a DTensor parameter is yielded as its gathered whole tensor
        (with the gathered gradient), and this rank's shard is written back when the caller moves on."""
        for p, g, st in self._params_with_grads(group):
            if not is_dtensor(p):
                yield p, g, st
                continue
            whole = gather_full(p)
            yield whole, gather_full(g), st
            write_shard(p, whole)

    def _zero_state(self, st: dict[str, Any], group: dict[str, Any], p: torch.Tensor, *keys: str,
                    memory_format: torch.memory_format = torch.preserve_format) -> None:
        """A parameter's first step: a step counter and zero moments ``keys`` in the group's state dtype."""
        sd = self._state_dtype(group, p)
        st["step"] = self._step_tensor()
        for k in keys:
            st[k] = torch.zeros_like(p, dtype=sd, memory_format=memory_format)

    @staticmethod
    def _state_dtype(group: dict[str, Any], p: torch.Tensor) -> torch.dtype:
        return group.get("state_dtype") or p.dtype

    @staticmethod
    def _step_tensor() -> torch.Tensor:
        return torch.zeros((), dtype=torch.int64)

    # -- torch contract -----------------------------------------------------------------------------------
    #: state keys always kept in fp32 whatever the parameter dtype (preconditioner matrices, norms).
    _fp32_keys: tuple[str, ...] = ()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load like torch.optim, but keep lmopt's dtypes and devices.

        torch's loader casts every floating state tensor to the parameter's dtype; that would upcast bf16
        moments and round fp32 preconditioners of bf16 parameters. The original tensors are re-applied with
        the intended dtype (moments: ``state_dtype``; ``_fp32_keys``: fp32) on the parameter's device, and
        host-side counters stay on the CPU.
        """
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"loaded state dict has {len(saved_groups)} parameter groups but the optimizer has "
                f"{len(self.param_groups)}; build the optimizer with the same param groups before loading"
            )
        originals: dict[int, dict[str, torch.Tensor]] = {}
        for sg in saved_groups:
            for pid in sg["params"]:
                st = state_dict["state"].get(pid)
                if st:
                    originals[pid] = {k: v for k, v in st.items() if isinstance(v, torch.Tensor)}
        super().load_state_dict(state_dict)
        for sg, group in zip(saved_groups, self.param_groups):
            sd_group = dict(group)
            for pid, p in zip(sg["params"], group["params"]):
                st = self.state.get(p)
                if not st or pid not in originals:
                    continue
                for k, v in originals[pid].items():
                    if k == "step":
                        st[k] = v.detach().to(device="cpu", dtype=torch.int64).clone()
                    elif k in self._cpu_keys:
                        st[k] = v.detach().to("cpu").clone()
                    elif k in self._moment_keys and v.is_floating_point():
                        st[k] = v.detach().to(device=p.device, dtype=self._state_dtype(sd_group, p)).clone()
                    elif k in self._fp32_keys and v.is_floating_point():
                        st[k] = v.detach().to(device=p.device, dtype=torch.float32).clone()

    def _prep_closure(self, closure: Callable[[], Any] | None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        return loss
