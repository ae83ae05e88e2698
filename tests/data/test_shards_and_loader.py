"""Token shards and the random-access loaders, against windows computed by hand from the word ids."""

import numpy as np
import pytest
import torch

from cod_train.config import ConfigError
from cod_train.core.errors import RunError
from cod_train.data.common import DataStats
from cod_train.data.loader import ShardEvalData, ShardLoader, permute
from cod_train.data.shards import TokenShards, tokenize_corpus

from .conftest import EOS, PAD, word_ids


def _tokenize(paths, tokenizer_file, out, **kw):
    return tokenize_corpus([str(p) for p in paths], tokenizer_file.read_text(), EOS, 403, out, **kw)


@pytest.fixture()
def shards(corpus, word_tokenizer_file, tmp_path):
    paths, _ = corpus
    _tokenize(paths, word_tokenizer_file, tmp_path / "tok", workers=1, shard_tokens=100)
    return TokenShards(tmp_path / "tok" / "train")


def _stream(texts):
    return np.concatenate([word_ids(t) + [EOS] for t in texts])


def test_shards_hold_every_document_with_eos_across_files(shards, corpus):
    _, texts = corpus
    assert len(shards.meta["shards"]) > 1  # shard_tokens=100 forces several files
    assert shards.dtype == np.uint16 and shards.num_docs == 30
    stream = _stream(texts)
    assert shards.num_tokens == len(stream)
    assert np.array_equal(shards.tokens(0, len(stream)), stream)
    assert np.array_equal(shards.tokens(95, 230), stream[95:230])  # crosses shard boundaries
    for i in (0, 16, 17, 29):
        assert shards.doc(i).tolist() == word_ids(texts[i]) + [EOS]
    assert shards.doc(5, max_len=3).tolist() == word_ids(texts[5])[:3]


def test_parallel_tokenization_is_byte_identical(corpus, word_tokenizer_file, tmp_path):
    paths, _ = corpus
    _tokenize(paths, word_tokenizer_file, tmp_path / "one", workers=1)
    _tokenize(paths, word_tokenizer_file, tmp_path / "two", workers=2)
    for name in ("00000.bin", "00000.idx.npy"):
        assert (tmp_path / "one/train" / name).read_bytes() == (tmp_path / "two/train" / name).read_bytes()


def test_large_vocab_uses_uint32(corpus, word_tokenizer_file, tmp_path):
    tokenize_corpus([str(corpus[0][0])], word_tokenizer_file.read_text(), EOS, 70000, tmp_path / "big", workers=1)
    assert TokenShards(tmp_path / "big" / "train").dtype == np.uint32


def test_eval_paths_and_fraction_hold_out(corpus, word_tokenizer_file, tmp_path):
    paths, texts = corpus
    _tokenize(paths[:1], word_tokenizer_file, tmp_path / "ep", eval_paths=[str(paths[1])], workers=1)
    assert TokenShards(tmp_path / "ep" / "train").num_docs == 17
    assert TokenShards(tmp_path / "ep" / "eval").num_docs == 13
    from cod_train.data.shards import is_held_out

    held = [t for t in texts if is_held_out(t, 0.3)]
    _tokenize(paths, word_tokenizer_file, tmp_path / "fr", eval_fraction=0.3, workers=2)
    ev = TokenShards(tmp_path / "fr" / "eval")
    assert 0 < len(held) < 30 and ev.num_docs == len(held)
    assert np.array_equal(ev.tokens(0, ev.num_tokens), _stream(held))


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097])
def test_permute_is_a_seeded_bijection(n):
    idx = np.arange(n)
    p = permute(idx, n, seed=5, epoch=0)
    assert sorted(p.tolist()) == list(range(n))
    if n >= 64:
        assert not np.array_equal(p, idx)
        assert not np.array_equal(p, permute(idx, n, seed=5, epoch=1))
        assert np.array_equal(p, permute(idx, n, seed=5, epoch=0))


def _loader(shards, **kw):
    args = dict(seq_len=8, packing=True, global_batch_size=4, dp_rank=0, dp_world=1, seed=7, pad_id=PAD)
    args.update(kw)
    return ShardLoader(shards, **args)


def test_packed_rows_are_hand_computed_windows(shards, corpus):
    stream = _stream(corpus[1])
    loader = _loader(shards)
    assert loader.num_samples == (len(stream) - 1) // 8
    counters = np.arange(0, 4)
    batch = next(loader)
    for row, k in enumerate(loader.sample_ids(counters)):
        window = stream[k * 8:k * 8 + 9]
        assert batch["input_ids"][row].tolist() == window[:-1].tolist()
        assert batch["labels"][row].tolist() == window[1:].tolist()


def test_unpacked_rows_truncate_pad_and_mask(shards, corpus):
    _, texts = corpus
    loader = _loader(shards, packing=False, seq_len=12)
    assert loader.num_samples == 30
    batch = next(loader)
    for row, k in enumerate(loader.sample_ids(np.arange(4))):
        doc = (word_ids(texts[k]) + [EOS])[:13]
        n = len(doc) - 1
        assert batch["input_ids"][row].tolist() == doc[:-1] + [PAD] * (12 - n)
        assert batch["labels"][row].tolist() == doc[1:] + [-100] * (12 - n)


def test_one_epoch_visits_every_sample_once(shards):
    loader = _loader(shards, global_batch_size=2)
    n = loader.num_samples
    seen = np.concatenate([loader.sample_ids(np.arange(e * n, (e + 1) * n)) for e in range(2)])
    assert sorted(seen[:n].tolist()) == list(range(n)) == sorted(seen[n:].tolist())
    assert not np.array_equal(seen[:n], seen[n:])  # reshuffled per epoch


def test_world_size_invariance_and_resume_on_other_world(shards):
    single = _loader(shards)
    ranks = [_loader(shards, dp_rank=r, dp_world=2) for r in range(2)]
    for _ in range(12):
        whole = next(single)
        parts = [next(r) for r in ranks]
        assert torch.equal(whole["input_ids"], torch.cat([p["input_ids"] for p in parts]))
        assert torch.equal(whole["labels"], torch.cat([p["labels"] for p in parts]))
    state = ranks[1].state_dict()
    restored = [_loader(shards, dp_rank=r, dp_world=4) for r in range(4)]
    for r in restored:
        r.load_state_dict(state)
    whole = next(single)
    assert torch.equal(whole["input_ids"], torch.cat([next(r)["input_ids"] for r in restored]))


def test_resume_40_then_8_two_ranks(shards, tmp_path):
    for rank in range(2):
        ref = _loader(shards, dp_rank=rank, dp_world=2)
        expected = [next(ref) for _ in range(48)][40:]  # crosses epochs (num_samples < 40 * 4)
        run = _loader(shards, dp_rank=rank, dp_world=2)
        for _ in range(40):
            next(run)
        torch.save(run.state_dict(), tmp_path / "data.pt")
        state = torch.load(tmp_path / "data.pt", weights_only=True)
        again = _loader(shards, dp_rank=rank, dp_world=2)
        again.load_state_dict(state)
        for want in expected:
            got = next(again)
            assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["labels"], want["labels"])


def test_state_from_other_data_is_rejected(shards):
    state = _loader(shards).state_dict()
    with pytest.raises(RunError, match="does not match this data"):
        _loader(shards, seq_len=4).load_state_dict(state)


def test_indivisible_batch_is_a_config_error(shards):
    with pytest.raises(ConfigError, match="divisible"):
        _loader(shards, global_batch_size=3, dp_world=2)


def test_stats_pass_through(shards):
    loader = _loader(shards, stats=DataStats(docs=30, skipped={"malformed_json": 1}, first={"malformed_json": "x"}))
    next(loader)
    s = loader.stats()
    assert s["skipped"] == {"malformed_json": 1} and s["samples_consumed"] == 4


def test_eval_is_disjoint_equal_length_and_capped(shards, corpus):
    stream = _stream(corpus[1])
    kw = dict(seq_len=8, packing=True, micro_batch_size=2, max_tokens=40, pad_id=PAD)
    parts = [ShardEvalData(shards, dp_rank=r, dp_world=2, **kw) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 2  # 5 windows: 3 rows + 2 rows (+1 ignored row)
    rows = [[row for b in p for row in zip(b["input_ids"].tolist(), b["labels"].tolist(), strict=True)] for p in parts]
    assert rows[1][-1][1] == [-100] * 8  # the padding row counts for nothing
    for k in range(5):
        ids, labels = rows[k % 2][k // 2]
        assert ids == stream[k * 8:k * 8 + 8].tolist() and labels == stream[k * 8 + 1:k * 8 + 9].tolist()
    again = [list(p) for p in parts]
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(again[0], list(parts[0]), strict=True))
