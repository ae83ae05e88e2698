import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cod_train.config import ConfigError
from cod_train.data.common import DataStats
from cod_train.data.readers import Bad, iter_records, resolve_paths


def _split(records):
    return [r for r in records if isinstance(r, str)], [r.reason for r in records if isinstance(r, Bad)]


def test_jsonl_bad_records_are_skipped_with_reasons(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "one"}\n'
                     b'{"text": "two"\n'                      # malformed
                     b'{"text": "caf\xe9"}\n'                 # latin-1 byte: invalid UTF-8
                     b'{"url": "x"}\n'                        # missing text
                     b'{"text": "   "}\n'                     # empty text
                     b'\n'                                    # blank line: not a record
                     b'{"text": 5}\n'                         # not a string
                     b'{"text": "three", "url": "u"}\n')
    texts, reasons = _split(list(iter_records(str(path))))
    assert texts == ["one", "three"]
    assert reasons == ["malformed_json", "invalid_utf8", "missing_text", "empty_text", "missing_text"]


def test_truncated_gzip_keeps_the_documents_before_the_cut(tmp_path):
    lines = b"".join(json.dumps({"text": f"doc {i}"}).encode() + b"\n" for i in range(3000))
    blob = gzip.compress(lines)
    path = tmp_path / "c4-train.00000-of-01024.json.gz"
    path.write_bytes(blob[: len(blob) // 2])
    texts, reasons = _split(list(iter_records(str(path))))
    assert reasons[-1] == "truncated_gz"
    assert 0 < len(texts) < 3000
    assert texts == [f"doc {i}" for i in range(len(texts))]  # an intact prefix, in order


def test_plain_text_units(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a b\nc\n\n\nd e\n")
    assert list(iter_records(str(path), text_unit="line")) == ["a b", "c", "d e"]
    assert list(iter_records(str(path), text_unit="paragraph")) == ["a b\nc", "d e"]
    assert list(iter_records(str(path), text_unit="file")) == ["a b\nc\n\n\nd e\n"]


def test_parquet_and_json_array(tmp_path):
    pq.write_table(pa.table({"text": ["x y", "", None, "z"]}), tmp_path / "p.parquet")
    texts, reasons = _split(list(iter_records(str(tmp_path / "p.parquet"))))
    assert texts == ["x y", "z"] and reasons == ["empty_text", "missing_text"]
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    assert [r.reason for r in iter_records(str(tmp_path / "broken.parquet"))] == ["unreadable"]
    (tmp_path / "arr.json").write_text(json.dumps([{"text": "q"}, {"instruction": "no text"}]))
    texts, reasons = _split(list(iter_records(str(tmp_path / "arr.json"))))
    assert texts == ["q"] and reasons == ["missing_text"]


def test_glob_matching_nothing_is_a_config_error(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    assert resolve_paths([str(tmp_path / "*.jsonl")]) == [str(tmp_path / "a.jsonl")]
    with pytest.raises(ConfigError, match="matches no file"):
        resolve_paths([str(tmp_path / "*.json.gz")])


def test_stats_count_and_keep_first_example():
    stats = DataStats()
    stats.skip("malformed_json", "first")
    stats.skip("malformed_json", "second")
    stats.merge(DataStats(docs=3, skipped={"empty_text": 2}, first={"empty_text": "e"}))
    assert stats.as_dict() == {"docs": 3, "skipped_total": 4, "skipped": {"malformed_json": 2, "empty_text": 2},
                               "first_bad": {"malformed_json": "first", "empty_text": "e"}}
