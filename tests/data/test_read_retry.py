"""Transient read errors (a connection reset mid-shard) are retried by reopening and skipping what was read;
only a persistent one is counted, as ``read_error``; a genuinely truncated gzip stays ``truncated_gz``."""

import gzip
import io
import json
import random

import pytest

from cod_train.data import readers
from cod_train.data.common import DataStats
from cod_train.data.readers import Bad, is_transient, iter_records
from cod_train.data.stream import DocStream

from .conftest import EOS, doc_text, write_jsonl

N_DOCS = 3000


class FlakyRaw(io.RawIOBase):
    """Bytes that raise ``exc`` when a read reaches the next offset of ``plan``: once per offset (the offset
    is then dropped), or at every open when ``always`` (a connection that never comes back)."""

    def __init__(self, data: bytes, plan: list[int], exc: type[BaseException], always: bool):
        self.data, self.plan, self.exc, self.always, self.pos = data, plan, exc, always, 0

    def readable(self):
        return True

    def readinto(self, b):
        if self.plan and self.pos >= self.plan[0]:
            if not self.always:
                self.plan.pop(0)
            raise self.exc("Connection reset by peer")
        end = min(len(self.data), self.plan[0]) if self.plan else len(self.data)
        n = min(len(b), end - self.pos)
        b[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    """A C4-like .json.gz shard (with one malformed line) and its plain .jsonl twin."""
    rng = random.Random(0)  # random words: ~1 MB compressed, well over gzip's 128 KiB read-ahead
    texts = [" ".join(f"w{rng.randrange(400)}" for _ in range(100 + i % 100)) for i in range(N_DOCS)]
    texts[7] = "{broken"
    lines = "".join((json.dumps({"text": t}) if t != "{broken" else t) + "\n" for t in texts)
    tmp_path = tmp_path_factory.mktemp("shard")
    gz = tmp_path / "c4-train.00000-of-00001.json.gz"
    gz.write_bytes(gzip.compress(lines.encode(), compresslevel=1))
    plain = tmp_path / "c4-train.00000-of-00001.jsonl"
    plain.write_text(lines)
    return {"gz": gz, "plain": plain}


@pytest.fixture()
def flaky(monkeypatch):
    """Make ``readers._open_binary`` serve ``flaky["path"]`` through a :class:`FlakyRaw`; sleeps are recorded."""
    state = {"path": None, "plan": [], "exc": ConnectionResetError, "always": False, "opens": 0, "sleeps": []}
    real_open = readers._open_binary

    def fake_open(path):
        if path != state["path"]:
            return real_open(path)
        state["opens"] += 1
        with open(path, "rb") as f:
            data = f.read()
        raw = io.BufferedReader(FlakyRaw(data, state["plan"], state["exc"], state["always"]))
        return gzip.GzipFile(fileobj=raw, mode="rb") if path.endswith(".gz") else raw

    monkeypatch.setattr(readers, "_open_binary", fake_open)
    monkeypatch.setattr(readers.time, "sleep", state["sleeps"].append)
    return state


@pytest.mark.parametrize("kind", ["gz", "plain"])
@pytest.mark.parametrize("where", [[0.5], [0.2, 0.5, 0.8]])  # several blips: each retry got further
@pytest.mark.parametrize("exc", [ConnectionResetError, TimeoutError])
def test_transient_error_mid_file_gives_the_uninterrupted_records(shard, flaky, monkeypatch, kind, where, exc):
    monkeypatch.setattr(readers, "READ_RETRIES", 1)
    path = str(shard[kind])
    want = list(iter_records(path))
    size = shard[kind].stat().st_size
    flaky.update(path=path, plan=[int(size * w) for w in where], exc=exc)
    got = list(iter_records(path))
    assert got == want
    assert sum(isinstance(r, Bad) for r in got) == 1  # the malformed line only
    assert flaky["opens"] == 1 + len(where) and flaky["plan"] == []
    assert flaky["sleeps"] == [readers.READ_BACKOFF_S] * len(where)


def test_persistent_read_error_is_counted_as_read_error_and_skips_the_rest(shard, flaky, monkeypatch):
    monkeypatch.setattr(readers, "READ_RETRIES", 3)
    path = str(shard["gz"])
    want = list(iter_records(path))
    flaky.update(path=path, plan=[shard["gz"].stat().st_size // 2], always=True)
    got = list(iter_records(path))
    assert 100 < len(got) - 1 < len(want) and got[:-1] == want[:len(got) - 1]  # an exact prefix
    assert got[-1].reason == "read_error" and "ConnectionResetError" in got[-1].example
    assert flaky["opens"] == 4
    assert flaky["sleeps"] == [readers.READ_BACKOFF_S * k for k in (1, 2, 4)]


def test_stream_counts_read_error_and_goes_on_with_the_next_file(shard, flaky, monkeypatch, tmp_path,
                                                                 word_tokenizer):
    monkeypatch.setattr(readers, "READ_RETRIES", 2)
    flaky.update(path=str(shard["gz"]), plan=[shard["gz"].stat().st_size // 2], always=True)
    other = write_jsonl(tmp_path / "other.jsonl", [doc_text(1000 + i, 4) for i in range(5)])
    stream = DocStream([str(shard["gz"]), str(other)], 0, 1, tokenizer_json=word_tokenizer.backend_tokenizer.to_str(),
                       eos_id=EOS, seq_len=64, packing=False, rows_per_batch=64, shuffle_buffer=0, seed=0,
                       shuffle_files=False, max_epochs=1)
    firsts = [int(row[0]) - 2 for rows in iter(stream.next_rows, []) for row in rows]
    assert firsts[-5:] == [(1000 + i) % 400 for i in range(5)]  # the next file is read in full
    stats = stream.stats.as_dict()
    assert stats["skipped"] == {"malformed_json": 1, "read_error": 1}
    assert "ConnectionResetError" in stats["first_bad"]["read_error"]
    assert isinstance(DataStats.from_dict(stats), DataStats)


def test_truncated_gzip_and_missing_file_are_not_retried(shard, monkeypatch, tmp_path):
    sleeps = []
    monkeypatch.setattr(readers.time, "sleep", sleeps.append)
    blob = shard["gz"].read_bytes()
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(blob[: len(blob) // 2])
    assert [r.reason for r in iter_records(str(cut)) if isinstance(r, Bad)][-1] == "truncated_gz"
    assert [r.reason for r in iter_records(str(tmp_path / "gone.json.gz"))] == ["unreadable"]
    assert sleeps == []


def test_error_classification():
    httpx2 = pytest.importorskip("httpx2")
    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError()) and is_transient(OSError(5, "EIO"))
    assert is_transient(httpx2.RemoteProtocolError("peer closed connection"))  # huggingface_hub's client
    assert not is_transient(EOFError()) and not is_transient(gzip.BadGzipFile())
    assert not is_transient(FileNotFoundError()) and not is_transient(ValueError())
    assert not is_transient(OSError("Couldn't deserialize thrift"))  # pyarrow / bz2: bad bytes, not a blip


def test_damaged_parquet_and_bz2_are_unreadable_without_retry(tmp_path, monkeypatch):
    import bz2

    import pyarrow as pa
    import pyarrow.parquet as pq

    sleeps = []
    monkeypatch.setattr(readers.time, "sleep", sleeps.append)
    pq.write_table(pa.table({"text": ["x y"] * 2000}), tmp_path / "p.parquet", compression="none")
    blob = (tmp_path / "p.parquet").read_bytes()
    (tmp_path / "bad.parquet").write_bytes(blob[:100] + b"\0" * (len(blob) - 200) + blob[-100:])
    (tmp_path / "bad.jsonl.bz2").write_bytes(bz2.compress(b'{"text": "a"}\n')[:20] + b"garbage" * 10)
    for name in ("bad.parquet", "bad.jsonl.bz2"):
        assert [r.reason for r in iter_records(str(tmp_path / name)) if isinstance(r, Bad)] == ["unreadable"]
    assert sleeps == []
