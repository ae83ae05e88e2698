"""A run's identity: the configuration keys that change the model or the data stream (``init_from=`` too: another
source is another run, even where its sizes match). Each checkpoint stores it; resuming under a different identity
would silently mix two runs in one, so it is refused (exit 2) unless ``resume_allow_change=true``. Every other key
(max_steps, cadences, logger, eval budget, lr schedule) may change on resume; the changes are logged."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cod_train.core.errors import ConfigError

log = logging.getLogger("cod_train")

# A flattened key is part of the identity when it starts with one of these (and is not excluded below).
IDENTITY_PREFIXES = ("model.", "data.", "sft.", "seed", "checkpoint", "tokenizer", "init_from",
                     "train.global_batch_size", "train.optimizer")
# Labels, performance switches and I/O plumbing: they do not change what is computed.
NOT_IDENTITY = {"model.name", "model.fused_loss", "model.loss_chunk_size", "model.use_kernels", "data.cache_dir",
                "data.num_workers", "data.tokenize_workers", "data.snapshot_every", "data.hub_timeout_s"}


def is_identity_key(key: str) -> bool:
    return key.startswith(IDENTITY_PREFIXES) and key not in NOT_IDENTITY


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(identity changes, other changes) as ``key: old -> new`` lines."""
    identity: list[str] = []
    other: list[str] = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if old != new:
            (identity if is_identity_key(key) else other).append(f"{key}: {_show(old)} -> {_show(new)}")
    return identity, other


def _saved_config(ckpt: Path) -> tuple[Path, dict[str, Any] | None] | None:
    """The stored config of ``ckpt``, or of the newest older checkpoint with readable metadata (a damaged one
    is skipped at resume, so its predecessor is what the run would continue); None when none is readable."""
    from cod_train.core.errors import RunError
    from cod_train.engine.checkpoint import list_checkpoints, read_meta

    older = [c for c in reversed(list_checkpoints(ckpt.parent)) if c.name <= ckpt.name]
    for candidate in [ckpt, *[c for c in older if c != ckpt]]:
        try:
            return candidate, read_meta(candidate).get("run_config")
        except RunError:
            continue
    return None


def check_resume(ckpt: Path | None, current: dict[str, Any], allow_change: bool) -> None:
    """Refuse to resume ``ckpt`` under a changed identity (ConfigError naming every changed key); log the
    keys that may change. Checkpoints written before identities were stored pass with a warning."""
    found = _saved_config(ckpt) if ckpt is not None else None
    if found is None:
        return
    ckpt, saved = found
    if saved is None:
        log.warning("%s records no configuration (written by an older cod-train): resuming unchecked", ckpt)
        return
    identity, other = config_changes(saved, current)
    if other:
        log.info("resuming %s with changed settings: %s", ckpt.name, "; ".join(other))
    if identity and not allow_change:
        raise ConfigError(f"resume would continue {ckpt.parent.parent} under a different model or data stream "
                          f"({'; '.join(identity)}); start a new run_dir, or pass resume_allow_change=true to "
                          "continue anyway")
    if identity:
        log.warning("resume_allow_change=true: continuing %s with %s", ckpt.name, "; ".join(identity))
