"""The Hugging Face hub: is it usable, and make offline mode hold whatever the hub library's version.

huggingface_hub reads ``HF_HUB_OFFLINE`` once, at import; set later (by a test, a notebook, a launcher), it is
ignored and every request is retried with back-off (huggingface_hub 2.4: 5 tries, ~20 s). Every cod_train path
that may touch the hub first calls :func:`require_hub` (or :func:`sync_offline_mode` where a cached copy may
serve), so that an unusable hub fails in about a second with a message naming the local options.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlparse

from cod_train.core.errors import ConfigError

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def offline_mode() -> str | None:
    """The offline variable that is set, if any."""
    return next((var for var in OFFLINE_VARS if _env_true(var)), None)


def sync_offline_mode() -> bool:
    """Push an offline variable set after import into the already-imported hub libraries; True if offline."""
    if offline_mode() is None:
        return False
    hub_constants: Any = sys.modules.get("huggingface_hub.constants")  # a module: set its attribute
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            if hasattr(datasets_config, name):
                setattr(datasets_config, name, True)
    return True


def _probe(host: str, port: int, timeout_s: float) -> str | None:
    result: list[str | None] = []

    def connect() -> None:  # getaddrinfo ignores socket timeouts, so the whole probe runs in a thread
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            result.append(None)
        except OSError as err:
            result.append(f"cannot connect to {host}:{port} ({err})")

    t0 = time.monotonic()
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout_s + 0.2)
    if not result:
        return f"no answer from {host}:{port} within {time.monotonic() - t0:.1f}s"
    return result[0]


def offline_reason(timeout_s: float = 1.0) -> str | None:
    """Why the hub cannot be used (an offline variable, or no connection within ``timeout_s``), else None.
    Behind an HTTPS proxy the proxy is what must answer."""
    var = offline_mode()
    if var:
        sync_offline_mode()
        return f"{var} is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = urlparse(proxy) if proxy and endpoint.scheme == "https" else endpoint
    default_port = 80 if target.scheme == "http" else 443
    return _probe(target.hostname or "huggingface.co", target.port or default_port, timeout_s)


def require_hub(what: str, hint: str, timeout_s: float = 1.0) -> None:
    """Raise a ConfigError naming ``what`` and the local alternatives (``hint``) when the hub is unusable."""
    reason = offline_reason(timeout_s)
    if reason:
        raise ConfigError(f"the Hugging Face hub is unreachable ({reason}), so {what} cannot be loaded; {hint}")


T = TypeVar("T")


def cached_or_hub(load: Callable[..., T], name: str, what: str, hint: str, timeout_s: float = 1.0,
                  **kwargs: Any) -> T:
    """``load(name, local_files_only=True)`` from the local HF cache; else, once the hub is known to be usable,
    ``load(name)``. A load that still fails becomes a ConfigError naming ``what``."""
    try:
        return load(name, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    require_hub(what, hint, timeout_s)
    try:
        return load(name, **kwargs)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{what} could not be loaded from the hub ({first}); {hint}") from None
