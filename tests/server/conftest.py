"""Fixtures for tests against a real OpenAI-compatible server (``make test-server`` starts llama-server and
sets the variables below). Without ``LMOPT_SERVER_URL`` every test here is skipped."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

URL = os.environ.get("LMOPT_SERVER_URL")


def pytest_collection_modifyitems(config, items):
    if URL:
        return
    skip = pytest.mark.skip(reason="no server: run `make test-server` (starts llama-server)")
    for item in items:
        if "tests/server" in item.nodeid.replace(os.sep, "/"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def server_url() -> str:
    return URL


@pytest.fixture(scope="session")
def model_alias() -> str:
    return os.environ.get("LMOPT_SERVER_MODEL", "smollm2")


@pytest.fixture(scope="session")
def slots() -> int:
    return int(os.environ.get("LMOPT_SERVER_SLOTS", "4"))


@pytest.fixture(scope="session")
def local_lm():
    from lmopt.lm import LocalLM

    return LocalLM()


@pytest.fixture
def server_lm(server_url, model_alias, slots):
    from lmopt.lm import OpenAICompatibleLM

    lm = OpenAICompatibleLM(model_alias, server_url, max_concurrency=slots, timeout=120)
    yield lm
    lm.close()
