"""Loading models without hanging on an unreachable Hugging Face hub.

Offline, ``from_pretrained("org/name")`` retries each file request with back-off (51 s measured for one
tokenizer) before it fails. :func:`hub_access` decides once whether the hub may be used — not for a local
folder, not when ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set, not when a one-second connection to
the hub fails — and otherwise switches huggingface_hub to offline mode for the duration of the load, so a
cached model still loads and a missing one fails at once. :func:`quiet_loading` keeps the libraries'
download and weight-loading progress bars out of lmopt's own output.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

_TRUE = ("1", "true", "yes", "on")
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
_probe_result: dict[str, bool] = {}


def offline_requested() -> bool:
    """Whether the user switched the hub off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = 1.0) -> bool:
    """Whether a TCP connection to the hub (``HF_ENDPOINT``, default huggingface.co) opens within ``timeout``.

    Checked once per process and endpoint. Behind a proxy the direct connection says nothing, so the hub is
    then assumed reachable and huggingface_hub's own retries apply.
    """
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if endpoint not in _probe_result:
        if any(os.environ.get(v) for v in _PROXY_VARS):
            _probe_result[endpoint] = True
        else:
            parts = urlsplit(endpoint)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                socket.create_connection((parts.hostname or "huggingface.co", port), timeout=timeout).close()
                _probe_result[endpoint] = True
            except OSError:
                _probe_result[endpoint] = False
    return _probe_result[endpoint]


def offline_reason(source: str | Path) -> str | None:
    """Why ``source`` must load without the hub (None: the hub may be used)."""
    if Path(source).expanduser().is_dir():
        return "it is a local folder"
    if offline_requested():
        return "HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set"
    if not hub_reachable():
        return f"the hub ({os.environ.get('HF_ENDPOINT', 'https://huggingface.co')}) cannot be reached"
    return None


@contextmanager
def hub_access(source: str | Path) -> Iterator[str | None]:
    """Load ``source`` inside this block; yields :func:`offline_reason` and, when it is not None, keeps
    huggingface_hub in offline mode until the block ends (the previous mode is restored)."""
    reason = offline_reason(source)
    if reason is None:
        yield None
        return
    try:
        from huggingface_hub import constants
    except ImportError:  # without huggingface_hub nothing can reach the hub anyway
        yield reason
        return
    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True  # read by is_offline_mode() at every request
    try:
        yield reason
    finally:
        constants.HF_HUB_OFFLINE = old


@contextmanager
def quiet_loading() -> Iterator[None]:
    """No transformers / huggingface_hub progress bars ("Loading weights ...") inside the block; the
    user's settings are restored after it."""
    try:
        from transformers.utils import logging as tf_logging
    except ImportError:
        tf_logging = None
    try:
        from huggingface_hub import utils as hub_utils
    except ImportError:
        hub_utils = None
    tf_on = tf_logging.is_progress_bar_enabled() if tf_logging else False
    hub_on = not hub_utils.are_progress_bars_disabled() if hub_utils else False
    if tf_on:
        tf_logging.disable_progress_bar()
    if hub_on:
        hub_utils.disable_progress_bars()
    try:
        yield
    finally:
        if tf_on:
            tf_logging.enable_progress_bar()
        if hub_on:
            hub_utils.enable_progress_bars()
