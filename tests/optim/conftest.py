import pytest

from lmopt.optim._base import _compiler_available


@pytest.fixture(scope="session")
def fast_impl() -> str:
    """The fast implementation to test against the reference (compiled when a compiler exists)."""
    reason = _compiler_available("cpu")
    if reason is not None:
        pytest.skip(f"compiled path unavailable: {reason}")
    return "compiled"
