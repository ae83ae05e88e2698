"""Streaming (data=c4) through local C4-layout json.gz files: rank/worker split, bad data, exact resume."""

import gzip

import pytest
import torch

from cod_train.config import DataConfig
from cod_train.data import build_eval_data, build_train_data
from cod_train.data.stream import DocStream

from .conftest import EOS, doc_text, word_ids, write_jsonl


@pytest.fixture()
def c4_files(tmp_path):
    """4 files x 25 docs (ids 0..99), plus a bad line in file 1 and a truncated file 3."""
    paths = []
    for f in range(4):
        texts = [doc_text(f * 25 + i, 4 + (i * 5) % 30) for i in range(25)]
        paths.append(write_jsonl(tmp_path / f"c4-train.{f:05d}-of-00004.json.gz", texts, gz=True))
    with gzip.open(paths[1], "ab") as fh:
        fh.write(b"{not json\n")
    blob = paths[3].read_bytes()
    paths[3].write_bytes(blob[: int(len(blob) * 0.6)])
    return paths


def _cfg(files, tok_file, **kw):
    args = dict(source="c4", paths=[str(p) for p in files], tokenizer=str(tok_file), seq_len=8, shuffle_buffer=5,
                num_workers=2, snapshot_every=7)
    args.update(kw)
    return DataConfig(**args)


def _streams_docs(files, tok, num_streams, epoch_docs):
    """First-word ids of the documents each stream reads in its first epoch."""
    seen = []
    for j in range(num_streams):
        s = DocStream([str(p) for p in files], j, num_streams, tokenizer_json=tok.backend_tokenizer.to_str(),
                      eos_id=EOS, seq_len=64, packing=False, rows_per_batch=1, shuffle_buffer=3, seed=1,
                      max_epochs=1)
        seen.append([int(r[0]) - 2 for rows in iter(s.next_rows, []) for r in rows])
    return seen


def test_ranks_and_workers_read_disjoint_documents(c4_files, word_tokenizer):
    seen = _streams_docs(c4_files, word_tokenizer, 4, 100)
    flat = [d for s in seen for d in s]
    assert len(flat) == len(set(flat))  # nothing read twice in the epoch
    assert set(range(50)) <= set(flat) and max(flat) < 75 + 25  # files 0-2 complete, a prefix of file 3
    assert all(len(s) > 0 for s in seen)
    # fewer files than streams: every 6th record, still disjoint
    few = _streams_docs(c4_files[:2], word_tokenizer, 6, 50)
    flat = [d for s in few for d in s]
    assert sorted(flat) == list(range(50))


def _through_checkpoint(state, tmp_path):
    torch.save(state, tmp_path / "data.pt")  # what the trainer does, loaded back with weights_only=True
    return torch.load(tmp_path / "data.pt", weights_only=True)


def test_stream_resume_40_then_8_two_ranks_two_workers(c4_files, word_tokenizer_file, tmp_path):
    from cod_train.data import build_tokenizer

    cfg = _cfg(c4_files, word_tokenizer_file)
    tok = build_tokenizer(cfg)
    for rank in range(2):
        def make():
            return build_train_data(cfg, tok, global_batch_size=4, dp_rank=rank, dp_world=2, seed=5)  # noqa: B023

        stop = 40 + rank  # rank 1 stops after an odd count, so worker 1 produces the next batch
        ref = make()
        want = [next(ref) for _ in range(stop + 8)][stop:]  # several epochs of the tiny corpus
        stats = ref.stats()
        ref.close()
        run = make()
        for _ in range(stop):
            next(run)
        state = _through_checkpoint(run.state_dict(), tmp_path)
        run.close()
        again = make()
        again.load_state_dict(state)
        for w in want:
            got = next(again)
            assert torch.equal(got["input_ids"], w["input_ids"]) and torch.equal(got["labels"], w["labels"])
        again.close()
        assert stats["skipped"].get("malformed_json", 0) >= 1 and stats["skipped"].get("truncated_gz", 0) >= 1


def test_inline_stream_packs_hand_computed_windows(c4_files, word_tokenizer_file, tmp_path):
    from cod_train.data import build_tokenizer

    cfg = _cfg(c4_files[:1], word_tokenizer_file, num_workers=0, shuffle_buffer=0)
    tok = build_tokenizer(cfg)
    loader = build_train_data(cfg, tok, global_batch_size=2, dp_rank=0, dp_world=1, seed=0)
    import numpy as np

    epoch_files_order = DocStream([str(c4_files[0])], 0, 1, tokenizer_json="", eos_id=EOS, seq_len=8, packing=True,
                                  rows_per_batch=2, shuffle_buffer=0, seed=0)._epoch_files()[0]
    assert epoch_files_order == [str(c4_files[0])]
    stream = np.concatenate([word_ids(doc_text(i, 4 + (i * 5) % 30)) + [EOS] for i in range(25)])
    for n in range(3):
        batch = next(loader)
        for r in range(2):
            k = 2 * n + r
            assert batch["input_ids"][r].tolist() == stream[k * 8:k * 8 + 8].tolist()
            assert batch["labels"][r].tolist() == stream[k * 8 + 1:k * 8 + 9].tolist()
    state = _through_checkpoint(loader.state_dict(), tmp_path)
    want = next(loader)
    loader.load_state_dict(state)
    assert torch.equal(next(loader)["input_ids"], want["input_ids"])


def test_stream_eval_is_rank_disjoint_and_equal_length(c4_files, word_tokenizer_file):
    from cod_train.data import build_tokenizer

    cfg = _cfg(c4_files[:1], word_tokenizer_file, eval_paths=[str(c4_files[2])], packing=False)
    tok = build_tokenizer(cfg)
    parts = [build_eval_data(cfg, tok, micro_batch_size=3, max_tokens=8 * 20, dp_rank=r, dp_world=2) for r in range(2)]
    batches = [list(p) for p in parts]
    assert len(batches[0]) == len(batches[1]) == len(parts[0]) == 4  # 10 rows per rank, 3 per batch
    firsts = [[int(row[0]) - 2 for b in bs for row in b["input_ids"]] for bs in batches]
    assert firsts[0] == [50 + i for i in range(0, 20, 2)] and firsts[1] == [50 + i for i in range(1, 20, 2)]
    assert torch.equal(list(parts[0])[0]["labels"], batches[0][0]["labels"])  # deterministic re-iteration


@pytest.mark.parametrize("change", [{"dp_world": 1}, {"num_workers": 0}])
def test_resume_on_another_layout_is_a_clear_one_line_run_error(c4_files, word_tokenizer_file, change):
    from cod_train.core.errors import RunError
    from cod_train.data import build_tokenizer

    cfg = _cfg(c4_files, word_tokenizer_file)
    tok = build_tokenizer(cfg)
    state = build_train_data(cfg, tok, global_batch_size=4, dp_rank=0, dp_world=2, seed=5).state_dict()
    cfg2 = _cfg(c4_files, word_tokenizer_file, num_workers=change.get("num_workers", 2))
    other = build_train_data(cfg2, tok, global_batch_size=4, dp_rank=0, dp_world=change.get("dp_world", 2), seed=5)
    with pytest.raises(RunError) as err:
        other.load_state_dict(state)
    msg = str(err.value)
    assert "\n" not in msg
    assert "data=c4 resumes only on the same number of data-parallel processes and the same data.num_workers" in msg
    assert "data=files, data=shards and data=sample resume on any world size" in msg
    assert "saved with 2 data-parallel process(es) and data.num_workers=2" in msg


def test_workers_outlive_ctrl_c_to_the_whole_process_group(c4_files, word_tokenizer_file, word_tokenizer):
    """Ctrl-C hits the loader's workers too: they must keep serving batches while the main process saves; and they
    still stop when the loader shuts them down. The signal is sent the moment the workers exist, before they can have
    run any code of their own (the race a real Ctrl-C during start-up hits)."""
    import os
    import signal

    data = build_train_data(_cfg(c4_files, word_tokenizer_file), word_tokenizer, global_batch_size=2, dp_rank=0,
                            dp_world=1, seed=0)
    data._start()
    it = data._it  # torch's DataLoader iterator
    workers = list(it._workers)
    assert len(workers) == 2
    try:
        for w in workers:
            os.kill(w.pid, signal.SIGINT)
        for _ in range(4):
            assert next(data)["input_ids"].shape == (2, 8)
        assert all(w.is_alive() for w in workers)
    finally:
        it._shutdown_workers()
    assert not any(w.is_alive() for w in workers)
