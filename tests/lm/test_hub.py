"""Loading an unknown model while offline fails at once, without touching the network."""

from __future__ import annotations

import socket

import pytest

from lmopt import _hub


@pytest.fixture
def no_network(monkeypatch):
    """Record every name lookup and connection; each one fails as it would on an offline machine."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args[:2])
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(_hub, "_probe_result", {})
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", *_hub._PROXY_VARS):
        monkeypatch.delenv(var, raising=False)
    return calls


def test_offline_reasons(no_network, tmp_path, monkeypatch):
    assert _hub.offline_reason(tmp_path) == "it is a local folder"
    assert no_network == []  # a local folder never probes
    assert "cannot be reached" in _hub.offline_reason("org/model")
    assert len(no_network) == 1
    _hub.offline_reason("org/other")
    assert len(no_network) == 1  # probed once per process
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE" in _hub.offline_reason("org/model")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(_hub, "_probe_result", {})
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert _hub.offline_reason("org/model") is None  # behind a proxy the direct probe says nothing


def test_hub_access_sets_and_restores_offline_mode(no_network):
    constants = pytest.importorskip("huggingface_hub.constants")
    before = constants.HF_HUB_OFFLINE
    with pytest.raises(RuntimeError):
        with _hub.hub_access("org/model") as reason:
            assert reason is not None and constants.HF_HUB_OFFLINE is True
            raise RuntimeError("load failed")
    assert constants.HF_HUB_OFFLINE == before


def test_unknown_model_offline_fails_without_network(no_network, monkeypatch):
    pytest.importorskip("transformers")
    from lmopt.lm import LocalLM

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"could not load model 'nope-org/missing-model'.*HF_HUB_OFFLINE"):
        LocalLM("nope-org/missing-model")
    assert no_network == []  # no request, so no minute of retries
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(OSError, match="cannot be reached"):
        LocalLM("nope-org/missing-model")
    assert len(no_network) == 1  # the one probe; the loader itself never went out


def test_quiet_loading_restores_the_users_setting():
    tf_logging = pytest.importorskip("transformers.utils.logging")
    assert tf_logging.is_progress_bar_enabled()
    with _hub.quiet_loading():
        assert not tf_logging.is_progress_bar_enabled()
    assert tf_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()
    try:
        with _hub.quiet_loading():
            pass
        assert not tf_logging.is_progress_bar_enabled()  # a user's "off" stays off
    finally:
        tf_logging.enable_progress_bar()
