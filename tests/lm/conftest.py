from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_openai_server import FakeOpenAIServer  # noqa: E402


@pytest.fixture
def fake_server() -> Iterator[FakeOpenAIServer]:
    """A local OpenAI-compatible server on a free port (see fake_openai_server.py)."""
    server = FakeOpenAIServer().start()
    try:
        yield server
    finally:
        server.stop()
