"""Tokenizers: a hub name, a local file/dir (tokenizer.json, SentencePiece ``.model``, HF dir) or
``train:<vocab>`` (byte-level BPE trained on the configured corpus, cached by corpus fingerprint + vocab)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import cast

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from cod_train.config import ConfigError, DataConfig
from cod_train.core import hub
from cod_train.data.common import atomic_dir, cache_root, file_fingerprint, fingerprint, locked, log
from cod_train.data.readers import iter_records
from cod_train.data.sources import OFFLINE_HINT, local_paths, require_hub, uses_hub

EOS = "<|endoftext|>"
PAD = "<|pad|>"
BPE_VERSION = 1
EOS_CANDIDATES = ("</s>", "<|endoftext|>", "<eos>", "<|end_of_text|>", "[SEP]")
PAD_CANDIDATES = ("<pad>", "<|pad|>", "[PAD]")


def build_tokenizer(cfg: DataConfig) -> PreTrainedTokenizerFast:
    """The configured tokenizer, with ``eos_token`` and ``pad_token`` set (pad falls back to eos)."""
    cfg.validate()
    spec = cfg.tokenizer.strip()
    if cfg.source == "shards" and spec in ("", "auto"):
        tok = load_tokenizer(str(Path(cfg.paths[0]).expanduser() / "tokenizer"))
    elif spec.startswith("train:"):
        tok = trained_tokenizer(cfg, _parse_vocab(spec))
    elif not spec:
        raise ConfigError("data.tokenizer is empty: give a hub name (t5-base), a path or train:<vocab_size>")
    else:
        tok = load_tokenizer(spec, cfg.hub_timeout_s)
    return ensure_special_tokens(tok)


def check_vocab(tokenizer: PreTrainedTokenizerFast, model_vocab_size: int | None) -> None:
    """Raise :class:`ConfigError` if the tokenizer produces ids the model's embedding cannot hold."""
    n = len(tokenizer)
    if model_vocab_size is not None and n > model_vocab_size:
        raise ConfigError(f"the tokenizer has {n} tokens but model.vocab_size={model_vocab_size}: set "
                          f"model.vocab_size=null (take it from the tokenizer) or >= {n}, or pick a smaller tokenizer")


def _parse_vocab(spec: str) -> int:
    try:
        vocab = int(spec.split(":", 1)[1])
    except ValueError:
        raise ConfigError(f"data.tokenizer={spec!r}: expected train:<vocab_size>, e.g. train:8192") from None
    if not 260 <= vocab <= 1 << 20:
        raise ConfigError(f"data.tokenizer={spec!r}: vocab size must be in [260, 1048576]")
    return vocab


def load_tokenizer(spec: str, hub_timeout_s: float = 1.0) -> PreTrainedTokenizerFast:
    path = Path(spec).expanduser()
    if path.is_dir():
        return _from_dir(path)
    if path.is_file():
        if path.suffix == ".json":
            return PreTrainedTokenizerFast(tokenizer_file=str(path))
        return _from_sentencepiece(path)
    if spec.startswith((".", "/", "~")) or spec.endswith((".json", ".model")):
        raise ConfigError(f"data.tokenizer={spec!r}: no such file or directory")
    return _from_hub(spec, hub_timeout_s)


def _from_dir(path: Path) -> PreTrainedTokenizerFast:
    if (path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists():
        return cast(PreTrainedTokenizerFast, AutoTokenizer.from_pretrained(str(path)))
    models = sorted(path.glob("*.model"))
    if models:
        return _from_sentencepiece(models[0])
    raise ConfigError(f"data.tokenizer={str(path)!r}: directory has no tokenizer.json, tokenizer_config.json or .model")


def _from_sentencepiece(path: Path) -> PreTrainedTokenizerFast:
    """Convert a (LLaMA-style) SentencePiece model to a fast tokenizer and check it encodes identically."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(path, Path(tmp) / "tokenizer.model")
        tok = LlamaTokenizer.from_pretrained(tmp)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    text = "The quick brown fox jumps over the lazy dog. In 1999, 42 people said: hello world!"
    probe = "".join(c for c in text if sp.unk_id() not in sp.encode(c))  # the converter drops unknown chars
    if tok(probe, add_special_tokens=False).input_ids != sp.encode(probe):
        raise ConfigError(f"{path}: SentencePiece model could not be converted faithfully; convert it to "
                          "tokenizer.json and pass that instead")
    return tok


def _from_hub(name: str, hub_timeout_s: float) -> PreTrainedTokenizerFast:
    tok = hub.cached_or_hub(AutoTokenizer.from_pretrained, name, f"data.tokenizer={name!r}",
                            hint="use data.tokenizer=train:8192 (trained on the corpus) or a local tokenizer.json / "
                                 f".model / HF directory; for the data, {OFFLINE_HINT}", timeout_s=hub_timeout_s)
    return cast(PreTrainedTokenizerFast, tok)


def ensure_special_tokens(tok: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    if tok.eos_token is None:
        vocab = tok.get_vocab()
        known = next((t for t in EOS_CANDIDATES if t in vocab), None)
        if known:
            tok.eos_token = known
        else:
            tok.add_special_tokens({"eos_token": EOS})
            log.warning("tokenizer had no eos token; added %s (vocabulary grows by one)", EOS)
    if tok.pad_token is None:
        known = next((t for t in PAD_CANDIDATES if t in tok.get_vocab()), None)
        tok.pad_token = known or tok.eos_token  # pad is masked by length, so sharing eos is safe
    return tok


# --- train:<vocab> ---------------------------------------------------------------------------------------


def trained_tokenizer(cfg: DataConfig, vocab: int) -> PreTrainedTokenizerFast:
    paths = _corpus_for_training(cfg)
    key = fingerprint(BPE_VERSION, vocab, cfg.text_field, cfg.text_unit, cfg.tokenizer_train_bytes,
                      [file_fingerprint(p) for p in paths])
    out = cache_root(cfg.cache_dir) / "tokenizers" / f"bpe{vocab}-{key}"
    if not (out / "tokenizer.json").exists():
        with locked(out):
            if not (out / "tokenizer.json").exists():
                with atomic_dir(out) as stage:
                    train_bpe(_texts(paths, cfg), vocab).save_pretrained(str(stage))
    return cast(PreTrainedTokenizerFast, AutoTokenizer.from_pretrained(str(out)))


def _corpus_for_training(cfg: DataConfig) -> list[str]:
    if cfg.source == "shards":
        raise ConfigError("data=shards carries its tokenizer: set data.tokenizer='' (or the path used at tokenize time)")
    if uses_hub(cfg):
        require_hub(f"{cfg.hub_dataset} (to train a tokenizer)", cfg.hub_timeout_s)
        from cod_train.data.sources import hub_data_files

        return hub_data_files(cfg, cfg.train_split)[:1]
    return local_paths(cfg)[0]


def _texts(paths: list[str], cfg: DataConfig) -> Iterator[str]:
    budget = cfg.tokenizer_train_bytes
    for path in paths:
        for rec in iter_records(path, cfg.text_field, cfg.text_unit):
            if isinstance(rec, str):
                yield rec
                budget -= len(rec)
                if budget <= 0:
                    return


def train_bpe(texts: Iterator[str], vocab: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style pre-tokenization), ids 0/1 = eos/pad, every byte representable."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)
