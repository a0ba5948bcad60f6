import os

import pytest

from lmopt.optim._base import _compiler_available


@pytest.fixture(scope="session")
def fast_impl() -> str:
    """The fast implementation to test against the reference (compiled when a compiler exists)."""
    reason = _compiler_available("cpu")
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":  # CI must not pass with the fast path untested
            pytest.fail(f"compiled path unavailable under CI=true: {reason}; install a C++ compiler (g++)")
        pytest.skip(f"compiled path unavailable: {reason}")
    return "compiled"
