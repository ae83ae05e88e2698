"""Tiny corpora and a word-level tokenizer whose ids can be computed by hand: word ``wN`` has id ``N + 2``,
eos ``<|endoftext|>`` is 0 and pad ``<|pad|>`` is 1."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

VOCAB_WORDS = 400
EOS, PAD = 0, 1


def word_ids(text: str) -> list[int]:
    return [int(w[1:]) + 2 for w in text.split()]


def doc_text(i: int, n_words: int) -> str:
    """Document i: distinct, predictable words (first word = the document id)."""
    return " ".join(f"w{(i * 7 + k) % VOCAB_WORDS if k else i % VOCAB_WORDS}" for k in range(n_words))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COD_TRAIN_CACHE", str(tmp_path_factory.getbasetemp() / "cod_cache"))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def word_tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": EOS, "<|pad|>": PAD, "<unk>": VOCAB_WORDS + 2}
    vocab.update({f"w{i}": i + 2 for i in range(VOCAB_WORDS)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<|endoftext|>", "<|pad|>"])
    path = tmp_path_factory.mktemp("wordtok") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="session")
def word_tokenizer(word_tokenizer_file: Path):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(word_tokenizer_file), eos_token="<|endoftext|>",
                                   pad_token="<|pad|>")


def write_jsonl(path: Path, texts: list[str], gz: bool = False) -> Path:
    lines = "".join(json.dumps({"text": t, "timestamp": "2019-04-25T12:57:54Z", "url": "https://x"}) + "\n"
                    for t in texts)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(lines)
    else:
        path.write_text(lines, encoding="utf-8")
    return path


@pytest.fixture()
def corpus(tmp_path: Path) -> tuple[list[Path], list[str]]:
    """Two jsonl files, 30 documents of 3..40 words."""
    texts = [doc_text(i, 3 + (i * 13) % 38) for i in range(30)]
    return [write_jsonl(tmp_path / "a.jsonl", texts[:17]), write_jsonl(tmp_path / "b.jsonl", texts[17:])], texts
