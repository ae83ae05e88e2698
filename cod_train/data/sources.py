"""Source selection (``data.source``), config validation and the Hugging Face hub reachability check."""

from __future__ import annotations

import os
import socket
import threading
import time
from urllib.parse import urlparse

from cod_train.config import ConfigError, DataConfig
from cod_train.data.readers import resolve_paths

SOURCES = ("sample", "files", "c4", "shards")
TEXT_UNITS = ("line", "paragraph", "file")
OFFLINE_HINT = ("offline alternatives: data=files data.paths=[/path/to/c4-train.*.json.gz] (local json/jsonl/"
                "json.gz/parquet/txt), or data=sample (the bundled sample, built from the package index)")


def validate(cfg: DataConfig) -> None:
    if cfg.source not in SOURCES:
        raise ConfigError(f"unknown data source {cfg.source!r}: use data=sample, data=files, data=c4 or data=shards")
    if cfg.seq_len < 1:
        raise ConfigError(f"data.seq_len must be >= 1, got {cfg.seq_len}")
    if cfg.text_unit not in TEXT_UNITS:
        raise ConfigError(f"data.text_unit must be one of {TEXT_UNITS}, got {cfg.text_unit!r}")
    if not 0.0 <= cfg.eval_fraction < 1.0:
        raise ConfigError(f"data.eval_fraction must be in [0, 1), got {cfg.eval_fraction}")
    if cfg.source == "shards" and len(cfg.paths) != 1:
        raise ConfigError("data=shards needs exactly one directory: data.paths=[DIR] (written by cod-data tokenize)")


def uses_hub(cfg: DataConfig) -> bool:
    return cfg.source == "c4" and not cfg.paths


def local_paths(cfg: DataConfig) -> tuple[list[str], list[str]]:
    """(train files, explicit eval files) of a local source; ``[]`` eval = hold out ``eval_fraction``."""
    if cfg.source == "sample":
        from cod_train.data.sample import sample_path

        return [str(sample_path("train", cfg.cache_dir))], [str(sample_path("eval", cfg.cache_dir))]
    train = resolve_paths(cfg.paths, "data.paths")
    evals = resolve_paths(cfg.eval_paths, "data.eval_paths") if cfg.eval_paths else []
    return train, evals


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline_reason(timeout_s: float = 1.0) -> str | None:
    """Why the hub cannot be used (offline env var or no TCP connection within ``timeout_s``), else None."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if _env_true(var):
            return f"{var} is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    result: list[str | None] = []

    def probe() -> None:  # getaddrinfo ignores socket timeouts, so the whole probe runs in a thread
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            result.append(None)
        except OSError as err:
            result.append(f"cannot connect to {host}:{port} ({err})")

    t0 = time.monotonic()
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s + 0.2)
    if not result:
        return f"no answer from {host}:{port} within {time.monotonic() - t0:.1f}s"
    return result[0]


def require_hub(what: str, timeout_s: float = 1.0, hint: str = OFFLINE_HINT) -> None:
    reason = hub_offline_reason(timeout_s)
    if reason:
        raise ConfigError(f"the Hugging Face hub is unreachable ({reason}), so {what} cannot be loaded; {hint}")


def hub_data_files(cfg: DataConfig, split: str) -> list[str]:
    """``hf://`` URLs of a hub dataset's files for ``split`` (C4: ``en/c4-<split>.NNNNN-of-MMMMM.json.gz``)."""
    require_hub(f"{cfg.hub_dataset} ({cfg.hub_config}/{split})", cfg.hub_timeout_s)
    from huggingface_hub import HfFileSystem

    fs = HfFileSystem()
    root = f"datasets/{cfg.hub_dataset}"
    patterns = [f"{root}/{cfg.hub_config}/*{split}*.json.gz", f"{root}/{cfg.hub_config}/{split}/*.parquet",
                f"{root}/{cfg.hub_config}/{split}-*.parquet", f"{root}/*/{cfg.hub_config}/{split}/*.parquet"]
    for pattern in patterns:
        found = sorted(fs.glob(pattern))
        if found:
            return [f"hf://{p}" for p in found]
    raise ConfigError(f"found no files for split {split!r} of {cfg.hub_dataset} ({cfg.hub_config}) on the hub; "
                      f"check data.hub_dataset / data.hub_config / data.{'train' if split == cfg.train_split else 'eval'}_split")
