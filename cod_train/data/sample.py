"""The bundled real-text sample, assembled from packages on the Python package registry.

No dataset host is needed: :func:`cod_train.data.fetch.download_package` fetches two packages that ship
real text as test/demo data, and we extract it (nothing is installed):

* ``llamafactory==0.9.5`` (sdist): ``data/c4_demo.jsonl`` (300 C4 documents), ``data/wiki_demo.txt``
  (30 Wikipedia articles) and ``data/alpaca_en_demo.json`` (999 instruction records, for SFT).
* ``gensim==4.4.0`` (wheel): an English Wikipedia XML excerpt, converted here to plain text.

``pip`` uses its configured index; ``COD_TRAIN_SAMPLE_FIND_LINKS=DIR`` takes both files from a local
directory instead (air-gapped machines: copy ``llamafactory-0.9.5.tar.gz`` and the gensim 4.4.0 wheel there).

``cod-data sample`` (run by ``make data``) is the explicit build step. ``data=sample`` (the default source of
``cod-pretrain``) still builds it on first use when it is missing, through the same fetch module, with a
warning that it is fetching, so a plain ``cod-pretrain`` keeps working without a separate set-up step.

Layout of ``sample_dir()`` (``<cache>/sample-v1``)::

    train.jsonl  eval.jsonl      {"text", "source"} per line; every 12th document is held out
    alpaca_en_demo.json          instruction data, unchanged
    PROVENANCE.json  README.md   packages, files, sha256 and licences

Public: :func:`sample_dir`, :func:`ensure_sample` and :func:`sample_path` (``"train"``, ``"eval"``,
``"alpaca"``).
"""

from __future__ import annotations

import bz2
import hashlib
import html
import io
import json
import re
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from xml.etree import ElementTree

from cod_train.data.common import atomic_dir, cache_root, locked, log
from cod_train.data.fetch import download_package

SAMPLE_VERSION = 1
EVAL_EVERY = 12  # document i is held out when i % EVAL_EVERY == EVAL_EVERY - 1

LLAMAFACTORY = "llamafactory==0.9.5"
GENSIM = "gensim==4.4.0"
WIKI_XML = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

LICENCES = {
    "c4": "ODC-By 1.0 (allenai/c4; documents are web text from Common Crawl, subject to its terms of use)",
    "wiki_demo": "CC BY-SA 4.0 (Wikipedia text, redistributed in llamafactory, Apache-2.0)",
    "enwiki": "CC BY-SA 4.0 / GFDL (Wikipedia dump excerpt, redistributed in gensim, LGPL-2.1)",
    "alpaca": "CC BY-NC 4.0 (Stanford Alpaca data; non-commercial), redistributed in llamafactory (Apache-2.0)",
}

NAMES = {"train": "train.jsonl", "eval": "eval.jsonl", "alpaca": "alpaca_en_demo.json",
         "provenance": "PROVENANCE.json"}


def sample_dir(cache_dir: str = "") -> Path:
    return cache_root(cache_dir) / f"sample-v{SAMPLE_VERSION}"


def sample_path(name: str = "train", cache_dir: str = "") -> Path:
    """Path of a sample file: ``train``, ``eval``, ``alpaca`` or ``provenance``.

    The sample is normally built by ``cod-data sample``; when it is missing it is fetched here, on first use,
    with a warning (set-up work inside a run), so ``data=sample`` works without the separate step."""
    if name not in NAMES:
        raise KeyError(f"unknown sample file {name!r}; choose from {sorted(NAMES)}")
    out = sample_dir(cache_dir)
    if not (out / NAMES["provenance"]).exists():
        log.warning("the bundled sample is not built yet (%s): fetching %s and %s from the package index now; "
                    "run `cod-data sample` (or `make data`) to do this set-up step explicitly", out,
                    LLAMAFACTORY, GENSIM)
    return ensure_sample(cache_dir) / NAMES[name]


def ensure_sample(cache_dir: str = "", force: bool = False) -> Path:
    """Build the sample unless it is already cached (``cod-data sample``); a file lock keeps concurrent ranks
    from racing."""
    out = sample_dir(cache_dir)
    if (out / NAMES["provenance"]).exists() and not force:
        return out
    with locked(out):
        if force or not (out / NAMES["provenance"]).exists():
            build_sample(out)
    return out


def build_sample(out: Path) -> Path:
    """Fetch the two packages (:func:`~cod_train.data.fetch.download_package`) and write the sample to ``out``."""
    t0 = time.time()
    log.info("building the bundled sample in %s from %s and %s", out, LLAMAFACTORY, GENSIM)
    hint = "or train on your own text: data=files data.paths=[...]"
    with tempfile.TemporaryDirectory(prefix="cod_sample_") as tmp, atomic_dir(out) as stage:
        lf_sdist = download_package(LLAMAFACTORY, Path(tmp), sdist=True, offline_hint=hint)
        gensim_whl = download_package(GENSIM, Path(tmp), sdist=False, offline_hint=hint)
        files = _extract_llamafactory(lf_sdist, Path(tmp))
        with zipfile.ZipFile(gensim_whl) as zf:
            wiki_xml = zf.read(WIKI_XML)
        docs = list(_sample_documents(files, wiki_xml))
        counts = _write_splits(docs, stage)
        (stage / NAMES["alpaca"]).write_bytes(files["alpaca"].read_bytes())
        provenance = _provenance(lf_sdist, gensim_whl, counts, stage)
        (stage / NAMES["provenance"]).write_text(json.dumps(provenance, indent=2) + "\n")
        (stage / "README.md").write_text(_readme(provenance))
    log.info("sample ready: %s documents in %.1fs", counts, time.time() - t0)
    return out


def _extract_llamafactory(sdist: Path, tmp: Path) -> dict[str, Path]:
    wanted = {"c4": "data/c4_demo.jsonl", "wiki_demo": "data/wiki_demo.txt", "alpaca": "data/alpaca_en_demo.json"}
    out: dict[str, Path] = {}
    with tarfile.open(sdist) as tf:
        for member in tf.getmembers():
            for key, suffix in wanted.items():
                if member.name.endswith("/" + suffix) and member.isfile():
                    target = tmp / Path(suffix).name
                    target.write_bytes(tf.extractfile(member).read())  # type: ignore[union-attr]
                    out[key] = target
    missing = set(wanted) - set(out)
    if missing:
        raise RuntimeError(f"{sdist.name} lacks {sorted(missing)}")
    return out


def _sample_documents(files: dict[str, Path], wiki_xml_bz2: bytes) -> Iterator[dict[str, str]]:
    for line in files["c4"].read_text(encoding="utf-8").splitlines():
        if line.strip():
            yield {"text": json.loads(line)["text"], "source": "c4"}
    for line in files["wiki_demo"].read_text(encoding="utf-8").splitlines():
        if line.strip():
            yield {"text": line.strip(), "source": "wiki_demo"}
    for text in wiki_articles(bz2.decompress(wiki_xml_bz2)):
        yield {"text": text, "source": "enwiki"}


def _write_splits(docs: list[dict[str, str]], stage: Path) -> dict[str, int]:
    counts = {"train": 0, "eval": 0}
    with open(stage / NAMES["train"], "w", encoding="utf-8") as tr, open(stage / NAMES["eval"], "w",
                                                                         encoding="utf-8") as ev:
        for i, doc in enumerate(docs):
            split = "eval" if i % EVAL_EVERY == EVAL_EVERY - 1 else "train"
            (ev if split == "eval" else tr).write(json.dumps(doc, ensure_ascii=False) + "\n")
            counts[split] += 1
    return counts


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _provenance(lf_sdist: Path, gensim_whl: Path, counts: dict[str, int], stage: Path) -> dict:
    return {
        "version": SAMPLE_VERSION,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "packages": [
            {"spec": LLAMAFACTORY, "file": lf_sdist.name, "sha256": _sha256(lf_sdist),
             "used": ["data/c4_demo.jsonl", "data/wiki_demo.txt", "data/alpaca_en_demo.json"]},
            {"spec": GENSIM, "file": gensim_whl.name, "sha256": _sha256(gensim_whl), "used": [WIKI_XML]},
        ],
        "licences": LICENCES,
        "documents": counts,
        "split": f"document i (in source order c4, wiki_demo, enwiki) is in eval when i % {EVAL_EVERY} == "
                 f"{EVAL_EVERY - 1}",
        "files": {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                  for p in sorted(stage.iterdir()) if p.suffix in (".jsonl", ".json")},
    }


def _readme(prov: dict) -> str:
    lines = ["# cod-train bundled sample", "",
             "Built by `cod-data sample` from packages on the Python package index (nothing installed).", "",
             "| file | from |", "|---|---|",
             "| train.jsonl / eval.jsonl | C4 (llamafactory c4_demo.jsonl), Wikipedia (llamafactory wiki_demo.txt, "
             "gensim enwiki XML excerpt, markup stripped) |",
             "| alpaca_en_demo.json | llamafactory data/alpaca_en_demo.json |", "", "## Licences", ""]
    lines += [f"- {k}: {v}" for k, v in prov["licences"].items()]
    lines += ["", f"Documents: {prov['documents']}. {prov['split']}.", ""]
    return "\n".join(lines)


# --- Wikipedia XML -> plain text -------------------------------------------------------------------------

_INNER_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_INNER_TABLE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.S)
_INNER_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_DROP_LINK = re.compile(r"^(file|image|category|media|[a-z]{2,3}(-[a-z]+)?):", re.I)


def wiki_articles(xml: bytes, min_chars: int = 200) -> Iterator[str]:
    """Main-namespace, non-redirect pages of a MediaWiki export, as plain text."""
    for _, elem in ElementTree.iterparse(io.BytesIO(xml), events=("end",)):
        if not elem.tag.endswith("}page"):
            continue
        ns = _child_text(elem, "ns")
        redirect = any(c.tag.endswith("}redirect") for c in elem)
        text = _child_text(elem, "revision/text") if ns == "0" and not redirect else ""
        elem.clear()
        clean = strip_wikitext(text) if text else ""
        if len(clean) >= min_chars:
            yield clean


def _child_text(elem: ElementTree.Element, path: str) -> str:
    node = elem
    for part in path.split("/"):
        child = next((c for c in node if c.tag.endswith("}" + part)), None)
        if child is None:
            return ""
        node = child
    return node.text or ""


def _repeat(pattern: re.Pattern[str], repl: str | Callable[[re.Match[str]], str], text: str) -> str:
    while True:
        new = pattern.sub(repl, text)
        if new == text:
            return new
        text = new


def _link(m: re.Match[str]) -> str:
    inner = m.group(1)
    return "" if _DROP_LINK.match(inner) else inner.split("|")[-1]


def strip_wikitext(markup: str) -> str:
    text = re.sub(r"<!--.*?-->", "", markup, flags=re.S)
    text = re.sub(r"<ref[^>/]*/>", "", text)
    text = re.sub(r"<ref[^>]*>.*?</ref>", "", text, flags=re.S)
    text = _repeat(_INNER_TEMPLATE, "", text)
    text = _repeat(_INNER_TABLE, "", text)
    text = _repeat(_INNER_LINK, _link, text)
    text = re.sub(r"\[https?://[^\s\]]+ ([^\]]*)\]", r"\1", text)
    text = re.sub(r"\[https?://[^\]]*\]", "", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"^(=+)\s*(.*?)\s*\1\s*$", r"\2", text, flags=re.M)
    text = html.unescape(text)
    lines = [ln.rstrip() for ln in text.splitlines() if not ln.lstrip().startswith(("|", "!", "{|", "|}"))]
    text = "\n".join(lines)
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    # Drop the trailing reference sections, which are mostly emptied markup after stripping.
    text = re.split(r"\n(?:See also|References|External links|Further reading|Notes)\n", text)[0]
    return text.strip()
