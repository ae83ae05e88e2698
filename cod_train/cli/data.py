"""``cod-data``: prepare data. Subcommand first, then Hydra-style ``key=value`` overrides::

    cod-data sample [force=true]                      # build (or show) the bundled sample
    cod-data evalsets [data_dir=PATH]                 # fetch (or show) the offline downstream eval sets
    cod-data train-tokenizer data=files data.paths=[/data/*.jsonl] vocab=32000 [out=DIR]
    cod-data tokenize data=files data.paths=[/data/c4/c4-train.*.json.gz] out=DIR [workers=16]
    cod-data tokenize data=c4 data.tokenizer=t5-base out=DIR max_files=8   # hub C4 (needs network)

``data=<option>`` picks ``cod_train/configs/data/<option>.yaml`` (default ``sample``); ``data.<key>=<value>``
overrides a DataConfig key (lists as ``[a,b]``). ``tokenize`` writes ``DIR/train`` and ``DIR/eval`` token
shards plus ``DIR/tokenizer``; train from them with ``cod-pretrain data=shards data.paths=[DIR]``.
Not a Hydra app only because Hydra has no subcommands; the override syntax is the same.
Exit code 2 (``error: ...`` on stderr) for a configuration problem.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from cod_train.cli._hydra import config_dir, report_config_error
from cod_train.config import ConfigError, DataConfig, to_typed

log = logging.getLogger("cod_train")
COMMANDS = ("sample", "evalsets", "train-tokenizer", "tokenize")
OPTIONS = {"sample": {"force", "cache_dir"}, "evalsets": {"data_dir"}, "train-tokenizer": {"vocab", "out"},
           "tokenize": {"out", "workers", "max_files"}}
ALIASES = {"run_dir": "out"}  # every command takes run_dir= for where it writes


def parse(argv: list[str]) -> tuple[str, DataConfig, dict[str, str]]:
    if not argv or argv[0] not in COMMANDS:
        raise ConfigError(f"usage: cod-data {{{'|'.join(COMMANDS)}}} [data=<option>] [data.key=value ...] "
                          "[options]; see the module docstring (python -m cod_train.cli.data --help)")
    command, rest = argv[0], argv[1:]
    option = next((a.split("=", 1)[1] for a in rest if a.startswith("data=")), "sample")
    yaml = Path(config_dir()) / "data" / f"{option}.yaml"
    if not yaml.exists():
        raise ConfigError(f"data={option}: no {yaml}; options: "
                          f"{sorted(p.stem for p in yaml.parent.glob('*.yaml'))}")
    dotlist = [a.removeprefix("data.") for a in rest if a.startswith("data.")]
    opts = {ALIASES.get(k, k): v for k, v in (a.split("=", 1) for a in rest if "=" in a and not a.startswith("data"))}
    unknown = set(opts) - OPTIONS[command] | {a for a in rest if "=" not in a}
    if unknown:
        raise ConfigError(f"cod-data {command}: unknown argument(s) {sorted(unknown)}; "
                          f"options: {sorted(OPTIONS[command])} and data.<key>=<value>")
    raw = OmegaConf.merge(OmegaConf.load(yaml), OmegaConf.from_dotlist(dotlist))
    return command, to_typed(raw, DataConfig), opts


def cmd_sample(cfg: DataConfig, opts: dict[str, str]) -> None:
    from cod_train.data.sample import ensure_sample

    out = ensure_sample(opts.get("cache_dir", cfg.cache_dir), force=opts.get("force", "false").lower() == "true")
    prov = json.loads((out / "PROVENANCE.json").read_text())
    print(f"sample: {out}\n  documents: {prov['documents']}\n  alpaca: {out / 'alpaca_en_demo.json'}")


def cmd_evalsets(cfg: DataConfig, opts: dict[str, str]) -> None:
    from cod_train.eval.downstream import TASKS, offline_data_root

    root = offline_data_root(opts.get("data_dir"))
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


def run(argv: list[str]) -> int:
    try:
        command, cfg, opts = parse(argv)
        {"sample": cmd_sample, "evalsets": cmd_evalsets, "train-tokenizer": cmd_train_tokenizer, "tokenize": cmd_tokenize}[command](cfg, opts)
    except ConfigError as err:
        return report_config_error(err)
    return 0


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
