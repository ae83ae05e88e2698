"""``cod-data``: prepare data. Subcommand first, then Hydra-style ``key=value`` overrides::

    cod-data sample [force=true]                      # build (or show) the bundled sample
    cod-data evalsets [data_dir=PATH]                 # fetch (or show) the offline downstream eval sets
    cod-data train-tokenizer data=files data.paths=[/data/*.jsonl] vocab=32000 [out=DIR]
    cod-data tokenize data=files data.paths=[/data/c4/c4-train.*.json.gz] out=DIR [workers=16]
    cod-data tokenize data=c4 data.tokenizer=t5-base out=DIR max_files=8   # hub C4 (needs network)

``data=<option>`` picks ``configs/data/<option>.yaml`` (default ``sample``); ``data.<key>=<value>``
overrides a DataConfig key (lists as ``[a,b]``). ``tokenize`` writes ``DIR/train`` and ``DIR/eval`` token
shards plus ``DIR/tokenizer``; train from them with ``cod-pretrain data=shards data.paths=[DIR]``.
Not a Hydra app only because Hydra has no subcommands; the override syntax is the same.
``sample`` and ``evalsets`` are the set-up steps that download (``make data`` runs both; see
:mod:`cod_train.data.fetch`). Exit code 2 (``error: ...`` on stderr) for a configuration problem, 1 for a
failed download.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import cast

from omegaconf import DictConfig, OmegaConf

from cod_train.config import DataConfig, to_typed
from cod_train.core.errors import ConfigError, RunError
from cod_train.runs.app import config_dir, report_error

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
    return command, to_typed(cast(DictConfig, raw), DataConfig), opts  # a data preset is a mapping


def run(argv: list[str]) -> int:
    try:
        command, cfg, opts = parse(argv)
        cfg.validate()
        from cod_train.runs import data as commands

        handlers = {"sample": commands.cmd_sample, "evalsets": commands.cmd_evalsets,
                    "train-tokenizer": commands.cmd_train_tokenizer, "tokenize": commands.cmd_tokenize}
        handlers[command](cfg, opts)
    except (ConfigError, RunError) as err:
        return report_error(err)
    return 0


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
