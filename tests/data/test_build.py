"""build_tokenizer / build_train_data / build_eval_data through DataConfig, and the configuration errors."""

import time

import numpy as np
import pytest
import torch

from cod_train.config import ConfigError, DataConfig
from cod_train.data import build_eval_data, build_tokenizer, build_train_data, check_vocab, local_corpus

from .conftest import EOS, PAD, word_ids, write_jsonl


def _cfg(paths, tokenizer_file, **kw):
    return DataConfig(source="files", paths=[str(p) for p in paths], tokenizer=str(tokenizer_file), seq_len=8, **kw)


def test_files_source_end_to_end(corpus, word_tokenizer_file, tmp_path, caplog):
    paths, texts = corpus
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "w1 w2"}\n{broken\n{"text": ""}\n')
    cfg = _cfg([tmp_path / "*.jsonl"], word_tokenizer_file, eval_fraction=0.2)
    tok = build_tokenizer(cfg)
    assert (tok.eos_token_id, tok.pad_token_id) == (EOS, PAD)
    with caplog.at_level("WARNING", logger="cod_train.data"):
        loader = build_train_data(cfg, tok, global_batch_size=4, dp_rank=0, dp_world=1, seed=0)
    assert any("skipped 1 record(s) with malformed_json" in r.getMessage() and "{broken" in r.getMessage()
               for r in caplog.records)
    stats = loader.stats()
    assert stats["skipped"] == {"malformed_json": 1, "empty_text": 1} and "broken" in stats["first_bad"]["malformed_json"]
    assert stats["docs"] == 31
    batch = next(loader)
    assert batch["input_ids"].shape == (4, 8) and batch["input_ids"].dtype == torch.long
    assert torch.equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])  # labels are shifted inputs
    evals = build_eval_data(cfg, tok, micro_batch_size=4, max_tokens=10**6, dp_rank=0, dp_world=1)
    eval_tokens = sum(int((b["labels"] != -100).sum()) for b in evals)
    from cod_train.data.shards import is_held_out

    all_texts = [*texts, "w1 w2"]
    held = [t for t in all_texts if is_held_out(t, 0.2)]
    n_held = sum(len(word_ids(t)) + 1 for t in held)
    assert eval_tokens == ((n_held - 1) // 8) * 8  # every held-out token once (packed windows)


def test_tokenized_corpus_is_cached_by_content(corpus, word_tokenizer_file, tmp_path):
    paths, _ = corpus
    cfg = _cfg(paths, word_tokenizer_file)
    tok = build_tokenizer(cfg)
    first = local_corpus(cfg, tok)
    mtime = (first / "train" / "meta.json").stat().st_mtime_ns
    assert local_corpus(cfg, tok) == first and (first / "train" / "meta.json").stat().st_mtime_ns == mtime
    write_jsonl(paths[1], ["w5 w6 w7"])
    assert local_corpus(cfg, tok) != first


def test_files_resume_two_ranks_two_workers(corpus, word_tokenizer_file):
    cfg = _cfg(corpus[0], word_tokenizer_file, num_workers=2, packing=False)
    tok = build_tokenizer(cfg)
    for rank in range(2):
        def make():
            return build_train_data(cfg, tok, global_batch_size=4, dp_rank=rank, dp_world=2, seed=3)  # noqa: B023

        ref = make()
        want = [next(ref) for _ in range(48)][40:]
        run = make()
        for _ in range(40):
            next(run)
        again = make()
        again.load_state_dict(run.state_dict())
        for w in want:
            got = next(again)
            assert torch.equal(got["input_ids"], w["input_ids"]) and torch.equal(got["labels"], w["labels"])


def test_unknown_source_and_bad_glob_fail_before_training(word_tokenizer_file, tmp_path):
    with pytest.raises(ConfigError, match="unknown data source 'c5'"):
        build_tokenizer(DataConfig(source="c5"))
    cfg = _cfg([tmp_path / "nothing-*.json.gz"], word_tokenizer_file)
    with pytest.raises(ConfigError, match="matches no file"):
        build_train_data(cfg, build_tokenizer(cfg), global_batch_size=2, dp_rank=0, dp_world=1, seed=0)


@pytest.mark.parametrize("env", [{"HF_DATASETS_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}])
def test_unreachable_hub_fails_fast_naming_offline_options(env, monkeypatch, word_tokenizer_file):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cfg = DataConfig(source="c4", tokenizer=str(word_tokenizer_file), hub_timeout_s=1.0)
    tok = build_tokenizer(cfg)
    start = time.monotonic()
    with pytest.raises(ConfigError) as err:
        build_train_data(cfg, tok, global_batch_size=2, dp_rank=0, dp_world=1, seed=0)
    assert time.monotonic() - start < 2.0
    assert "data=files data.paths=" in str(err.value) and "data=sample" in str(err.value)


def test_hub_tokenizer_offline_is_a_config_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="unreachable"):
        build_tokenizer(DataConfig(tokenizer="not-a-real-org/not-a-tokenizer"))


def test_check_vocab(word_tokenizer):
    check_vocab(word_tokenizer, None)
    check_vocab(word_tokenizer, len(word_tokenizer))
    with pytest.raises(ConfigError, match="model.vocab_size=100"):
        check_vocab(word_tokenizer, 100)


def test_trained_bpe_is_cached_and_round_trips(corpus):
    paths, texts = corpus
    cfg = DataConfig(source="files", paths=[str(p) for p in paths], tokenizer="train:300")
    tok = build_tokenizer(cfg)
    assert len(tok) <= 300 and tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    assert tok.decode(tok(texts[3], add_special_tokens=False).input_ids) == texts[3]
    assert tok.name_or_path == build_tokenizer(cfg).name_or_path  # same cache entry
    other = build_tokenizer(DataConfig(source="files", paths=[str(paths[0])], tokenizer="train:300"))
    assert other.name_or_path != tok.name_or_path


def test_sentencepiece_model_and_hf_dir(tmp_path):
    import sentencepiece as spm

    text = tmp_path / "sp.txt"
    text.write_text("\n".join(f"the quick brown fox {i} jumps over the lazy dog number {i * 7}" for i in range(300)))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "m"), vocab_size=60, model_type="bpe",
                                   minloglevel=2)
    tok = build_tokenizer(DataConfig(tokenizer=str(tmp_path / "m.model")))
    probe = "the lazy fox 42 jumps"
    assert tok(probe, add_special_tokens=False).input_ids == spm.SentencePieceProcessor(
        model_file=str(tmp_path / "m.model")).encode(probe)
    assert tok.eos_token == "</s>" and tok.pad_token_id == tok.eos_token_id and len(tok) == 60
    tok.save_pretrained(str(tmp_path / "hf"))
    again = build_tokenizer(DataConfig(tokenizer=str(tmp_path / "hf")))
    assert again(probe, add_special_tokens=False).input_ids == tok(probe, add_special_tokens=False).input_ids


def test_shards_source_uses_saved_tokenizer(corpus, word_tokenizer, tmp_path):
    from cod_train.data.shards import tokenize_corpus

    out = tmp_path / "shards"
    tokenize_corpus([str(p) for p in corpus[0]], word_tokenizer.backend_tokenizer.to_str(), EOS, len(word_tokenizer),
                    out, eval_fraction=0.25, workers=1)
    word_tokenizer.save_pretrained(str(out / "tokenizer"))
    cfg = DataConfig(source="shards", paths=[str(out)], tokenizer="", seq_len=8)
    tok = build_tokenizer(cfg)
    assert tok.get_vocab() == word_tokenizer.get_vocab()
    stream = np.fromfile(out / "train" / "00000.bin", dtype=np.uint16)
    loader = build_train_data(cfg, tok, global_batch_size=2, dp_rank=0, dp_world=1, seed=1)
    k = int(loader.sample_ids(np.arange(1))[0])
    assert next(loader)["input_ids"][0].tolist() == stream[k * 8:k * 8 + 8].tolist()
    assert build_eval_data(cfg, tok, micro_batch_size=2, max_tokens=16, dp_rank=0, dp_world=1) is not None
