"""Source selection (``data.source``), config validation and the hub check with the data's offline hint."""

from __future__ import annotations

import threading

from cod_train.config import ConfigError, DataConfig
from cod_train.core import hub
from cod_train.data.readers import resolve_paths

OFFLINE_HINT = ("offline alternatives: data=files data.paths=[/path/to/c4-train.*.json.gz] (local json/jsonl/"
                "json.gz/parquet/txt), or data=sample (the bundled sample, built from the package index)")


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


def require_hub(what: str, timeout_s: float = 1.0, hint: str = OFFLINE_HINT) -> None:
    hub.require_hub(what, hint, timeout_s)


# (hub_dataset, hub_config, split) -> hf:// URLs. Resolved once per process: the pre-training loop builds its
# eval data at every eval on every rank, and re-probing and re-globbing the hub each time would let one network
# blip kill a multi-day run. A failed resolution is not cached.
_HUB_FILES: dict[tuple[str, str, str], tuple[str, ...]] = {}
_HUB_FILES_LOCK = threading.Lock()


def clear_hub_files_cache() -> None:
    """Forget the resolved hub file lists (tests; a process that wants to see new files on the hub)."""
    with _HUB_FILES_LOCK:
        _HUB_FILES.clear()


def prime_hub_files(cfg: DataConfig, split: str, files: list[str]) -> None:
    """Give this process the file list another process resolved (rank 0), so it never probes the hub itself."""
    with _HUB_FILES_LOCK:
        _HUB_FILES[(cfg.hub_dataset, cfg.hub_config, split)] = tuple(files)


def hub_data_files(cfg: DataConfig, split: str) -> list[str]:
    """``hf://`` URLs of a hub dataset's files for ``split`` (C4: ``en/c4-<split>.NNNNN-of-MMMMM.json.gz``).

    The hub is probed and globbed on the first call per (dataset, config, split) of a process only."""
    key = (cfg.hub_dataset, cfg.hub_config, split)
    with _HUB_FILES_LOCK:
        if key not in _HUB_FILES:
            _HUB_FILES[key] = tuple(_glob_hub_files(cfg, split))
        return list(_HUB_FILES[key])


def _glob_hub_files(cfg: DataConfig, split: str) -> list[str]:
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
