"""Instruction records: local alpaca JSON/JSONL, chat ``messages`` JSONL, or a hub dataset by name.

Every record becomes an :class:`Example`; a record without the expected fields stops the run with a
message naming the file, the record and the fields, before any model is loaded.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cod_train.config import ConfigError
from cod_train.core import hub
from cod_train.sft.config import SFTDataConfig

log = logging.getLogger("cod_train.sft")

ROLES = ("system", "user", "assistant")


class SFTDataError(ConfigError):
    """Instruction data that cannot be used as configured."""


@dataclass
class Example:
    """One conversation. Alpaca records keep their fields so the alpaca template can use them verbatim."""

    messages: list[dict[str, str]]
    alpaca: dict[str, str] | None = None  # {"instruction", "input", "output"}
    source: str = ""

    @staticmethod
    def from_alpaca(instruction: str, inp: str, output: str, source: str = "") -> Example:
        user = instruction if not inp else f"{instruction}\n\n{inp}"
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
        return Example(msgs, {"instruction": instruction, "input": inp, "output": output}, source)


@dataclass
class _Fields:
    instruction: str
    input: str
    output: str
    messages: str
    format: str = "auto"


# ----------------------------------------------------------------------------- reading files


def _iter_json_file(path: str) -> Iterator[tuple[str, Any]]:
    """A JSON array (or one object) of records, or JSON lines (``.jsonl``, or ``.json`` holding lines)."""
    text = Path(path).read_text(encoding="utf-8")
    if not path.endswith((".jsonl", ".ndjson")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            if not text.lstrip().startswith("{"):
                raise SFTDataError(f"{path}: not valid JSON ({err})") from None
        else:
            for i, rec in enumerate(data if isinstance(data, list) else [data]):
                yield f"{path} record {i}", rec
            return
    yield from _iter_json_lines(path, text)


def _iter_json_lines(path: str, text: str) -> Iterator[tuple[str, Any]]:
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield f"{path} line {lineno}", json.loads(line)
            except json.JSONDecodeError as err:
                raise SFTDataError(f"{path} line {lineno}: not valid JSON ({err.msg})") from None


def resolve_files(patterns: list[str]) -> list[str]:
    files: list[str] = []
    for pat in patterns:
        hits = sorted(glob.glob(os.path.expanduser(pat), recursive=True))
        if not hits:
            raise SFTDataError(f"sft.paths: no file matches {pat!r}")
        files += [h for h in hits if os.path.isfile(h)]
    return files


# ----------------------------------------------------------------------------- records -> examples


def _detect(rec: dict[str, Any], f: _Fields) -> str:
    if f.format != "auto":
        return f.format
    if f.messages in rec:
        return "messages"
    return "alpaca"


def _alpaca(rec: dict[str, Any], where: str, f: _Fields) -> Example:
    missing = [k for k in (f.instruction, f.output) if not isinstance(rec.get(k), str)]
    if missing:
        raise SFTDataError(
            f"{where}: missing or non-string field(s) {missing}; alpaca records need "
            f"'{f.instruction}', '{f.output}' (and optionally '{f.input}'); found keys {sorted(rec)}. "
            f"Chat data needs a '{f.messages}' list; rename fields with sft.instruction_field/output_field/..."
        )
    inp = rec.get(f.input) or ""
    if not isinstance(inp, str):
        raise SFTDataError(f"{where}: field '{f.input}' must be a string, got {type(inp).__name__}")
    return Example.from_alpaca(rec[f.instruction], inp, rec[f.output], where)


def _messages(rec: dict[str, Any], where: str, f: _Fields) -> Example:
    msgs = rec.get(f.messages)
    if not isinstance(msgs, list) or not msgs:
        raise SFTDataError(
            f"{where}: chat records need a non-empty '{f.messages}' list of {{role, content}}; found keys {sorted(rec)}"
        )
    out = []
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise SFTDataError(
                f"{where}: message {j} must be {{'role': one of {list(ROLES)}, 'content': str}}, got {m!r:.120}"
            )
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise SFTDataError(f"{where}: no 'assistant' message, so nothing to learn from")
    return Example(out, None, where)


def to_examples(records: Iterable[tuple[str, Any]], cfg: SFTDataConfig) -> list[Example]:
    """Validate and convert ``(where, record)`` pairs; the first bad record raises :class:`SFTDataError`."""
    f = _Fields(cfg.instruction_field, cfg.input_field, cfg.output_field, cfg.messages_field, cfg.format)
    out: list[Example] = []
    for where, rec in records:
        if not isinstance(rec, dict):
            raise SFTDataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        fmt = _detect(rec, f)
        out.append(_messages(rec, where, f) if fmt == "messages" else _alpaca(rec, where, f))
        if cfg.max_examples is not None and len(out) >= cfg.max_examples:
            break
    if not out:
        raise SFTDataError("the instruction data holds no records")
    return out


# ----------------------------------------------------------------------------- sources


def _hub_records(cfg: SFTDataConfig) -> Iterator[tuple[str, Any]]:
    import datasets

    name = cfg.hub_dataset
    offline = hub.sync_offline_mode()  # offline: a cached copy may serve, and nothing is retried
    reason = None if offline else hub.offline_reason(2.0)
    if reason:
        raise SFTDataError(f"cannot load hub dataset {name!r}: the hub is unreachable ({reason}). Use a local file "
                           "(sft.paths=[data.json]) or, for a cached copy, set HF_DATASETS_OFFLINE=1")
    try:
        ds = datasets.load_dataset(name, cfg.hub_config, split=cfg.hub_split)
    except Exception as err:  # noqa: BLE001 - any loading failure gets the same actionable message
        hint = "offline mode is on and no cached copy exists" if offline else "no such dataset or split"
        first = str(err).splitlines()[0][:200] if str(err) else ""
        raise SFTDataError(f"cannot load hub dataset {name!r} (split {cfg.hub_split!r}): {hint} "
                           f"({type(err).__name__}: {first}). Use a local file instead: sft.paths=[data.json]") from None
    for i, rec in enumerate(ds):
        yield f"{name} record {i}", rec


def default_sample_path() -> str:
    """The bundled alpaca instruction sample (999 records) from ``cod_train.data``."""
    from cod_train.data import sample_path  # type: ignore[attr-defined]

    return str(sample_path("alpaca"))


def data_files(cfg: SFTDataConfig) -> list[str]:
    """Local files to read ([] for a hub dataset); the bundled sample when nothing is configured."""
    if cfg.hub_dataset:
        return []
    return resolve_files(cfg.paths) if cfg.paths else [default_sample_path()]


def load_examples(cfg: SFTDataConfig) -> list[Example]:
    """All examples of the configured source, validated."""
    if cfg.hub_dataset:
        examples = to_examples(_hub_records(cfg), cfg)
    else:
        files = data_files(cfg)
        examples = to_examples((r for p in files for r in _iter_json_file(p)), cfg)
    log.info("sft: %d examples", len(examples))
    return examples
