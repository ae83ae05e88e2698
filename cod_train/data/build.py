"""``build_train_data`` / ``build_eval_data``: config -> loader (docs/architecture.md, "Train data").

Local sources (``sample``, ``files``) are tokenized once into token shards, cached under
``<cache>/tokens/<fingerprint>`` (files' content, tokenizer, text options); the first process to get the
lock builds them, the others wait and reuse. ``shards`` reads a ``cod-data tokenize`` output directly.
``c4`` streams (hub, or local files in ``data.paths``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from transformers import PreTrainedTokenizerFast

from cod_train.config import ConfigError, DataConfig
from cod_train.data.common import atomic_dir, cache_root, file_fingerprint, fingerprint, locked, log
from cod_train.data.loader import ShardEvalData, ShardLoader
from cod_train.data.readers import resolve_paths
from cod_train.data.shards import TokenShards, log_shards, tokenize_corpus
from cod_train.data.sources import hub_data_files, local_paths, uses_hub

if TYPE_CHECKING:
    from cod_train.data.stream import StreamEvalData, StreamLoader

TOKENS_VERSION = 1


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    return fingerprint(tokenizer.backend_tokenizer.to_str(), tokenizer.eos_token_id)


def local_corpus(cfg: DataConfig, tokenizer: PreTrainedTokenizerFast) -> Path:
    """Directory with ``train/`` (+ ``eval/``) token shards of a local source, tokenized on first use."""
    if cfg.source == "shards":
        return Path(cfg.paths[0]).expanduser()
    train, evals = local_paths(cfg)
    key = fingerprint(TOKENS_VERSION, tokenizer_fingerprint(tokenizer), cfg.text_field, cfg.text_unit,
                      cfg.eval_fraction, [file_fingerprint(p) for p in train], [file_fingerprint(p) for p in evals])
    out = cache_root(cfg.cache_dir) / "tokens" / f"{cfg.source}-{key}"
    if (out / "train" / "meta.json").exists():
        return out
    with locked(out):
        if not (out / "train" / "meta.json").exists():
            log.info("tokenizing %d file(s) into %s", len(train) + len(evals), out)
            with atomic_dir(out) as stage:
                tokenize_corpus(train, tokenizer.backend_tokenizer.to_str(), tokenizer.eos_token_id,
                                len(tokenizer), stage, eval_paths=evals, eval_fraction=cfg.eval_fraction,
                                text_field=cfg.text_field, text_unit=cfg.text_unit, workers=cfg.tokenize_workers)
    return out


def _open_shards(path: Path, tokenizer: PreTrainedTokenizerFast) -> TokenShards:
    if not (path / "meta.json").exists():
        raise ConfigError(f"{path} holds no token shards (meta.json missing); write them with "
                          "`cod-data tokenize data=files data.paths=[...] out=DIR`")
    shards = TokenShards(path)
    vocab = shards.meta["vocab_size"]
    if vocab > len(tokenizer) or shards.eos_id != tokenizer.eos_token_id:
        raise ConfigError(f"{path} was tokenized with another tokenizer (vocab {vocab}, eos {shards.eos_id}) than "
                          f"data.tokenizer (vocab {len(tokenizer)}, eos {tokenizer.eos_token_id}); set "
                          "data.tokenizer='' to use the one saved with the shards")
    return shards


def build_train_data(cfg: DataConfig, tokenizer: PreTrainedTokenizerFast, *, global_batch_size: int, dp_rank: int,
                     dp_world: int, seed: int) -> ShardLoader | StreamLoader:
    """Stateful iterator of this rank's ``global_batch_size // dp_world`` rows of each global batch."""
    cfg.validate()
    if global_batch_size % dp_world:
        raise ConfigError(f"train.global_batch_size={global_batch_size} must be divisible by the data-parallel "
                          f"world size {dp_world}")
    if cfg.source == "c4":
        from cod_train.data.stream import StreamLoader

        files = _stream_files(cfg, cfg.train_split, cfg.paths)
        return StreamLoader(files, tokenizer, cfg, global_batch_size=global_batch_size, dp_rank=dp_rank,
                            dp_world=dp_world, seed=seed)
    shards = _open_shards(local_corpus(cfg, tokenizer) / "train", tokenizer)
    stats = shards.stats
    if dp_rank == 0:
        log_shards(shards, f"train data ({cfg.source})")
        stats.warn(f"data={cfg.source}")
    return ShardLoader(shards, seq_len=cfg.seq_len, packing=cfg.packing, global_batch_size=global_batch_size,
                       dp_rank=dp_rank, dp_world=dp_world, seed=seed, pad_id=tokenizer.pad_token_id, stats=stats)


def build_eval_data(cfg: DataConfig, tokenizer: PreTrainedTokenizerFast, *, micro_batch_size: int, max_tokens: int,
                    dp_rank: int, dp_world: int) -> ShardEvalData | StreamEvalData | None:
    """Fresh, deterministic iterable of held-out batches (each rank a disjoint part, ``max_tokens`` in all).

    Returns ``None`` when the source has nothing held out (``eval_fraction: 0`` and no ``eval_paths``)."""
    cfg.validate()
    if cfg.source == "c4":
        from cod_train.data.stream import StreamEvalData

        files = _stream_files(cfg, cfg.eval_split, cfg.eval_paths)
        if not files:
            return None
        return StreamEvalData(files, tokenizer, cfg, micro_batch_size=micro_batch_size, max_tokens=max_tokens,
                              dp_rank=dp_rank, dp_world=dp_world)
    path = local_corpus(cfg, tokenizer) / "eval"
    if not (path / "meta.json").exists():
        return None
    data = ShardEvalData(_open_shards(path, tokenizer), seq_len=cfg.seq_len, packing=cfg.packing,
                         micro_batch_size=micro_batch_size, max_tokens=max_tokens, dp_rank=dp_rank,
                         dp_world=dp_world, pad_id=tokenizer.pad_token_id)
    return data if data.num_samples > 0 else None


def _stream_files(cfg: DataConfig, split: str, local: list[str]) -> list[str]:
    """Local globs if given, else the hub's files for ``split`` (none when streaming local train files)."""
    if local:
        return resolve_paths(local, "data.paths" if local is cfg.paths else "data.eval_paths")
    return hub_data_files(cfg, split) if uses_hub(cfg) else []
