"""Lazy imports of optional dependencies with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise an ImportError that says which lmopt extra provides it.

    >>> require("json", "dev").__name__
    'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # re-raised with the fix in the message
        raise ImportError(
            f"{module!r} is needed for this feature but is not installed; install lmopt's {extra!r} extra: "
            f"from a clone of lmopt, pip install -e '.[{extra}]'; from a built wheel, "
            f"pip install 'dist/lmopt-<version>-py3-none-any.whl[{extra}]'"
        ) from exc
