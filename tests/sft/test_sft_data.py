"""SFT data: response-only labels on hand-made examples, formats, bad records, packing, the batch iterator."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from cod_train.core.constants import IGNORE_INDEX as IGNORE
from cod_train.sft.config import ALPACA_PROMPT, ALPACA_PROMPT_NO_INPUT, SFTDataConfig
from cod_train.sft.loader import SFTBatches, build_sft_data, collate, eval_batches, pack
from cod_train.sft.records import Example, SFTDataError, load_examples
from cod_train.sft.template import encode, resolve_template
from tests.helpers.tokenizers import char_ids, char_tokenizer


def counted(labels: list[int]) -> list[int]:
    return [t for t, lab in enumerate(labels) if lab != IGNORE]


# ----------------------------------------------------------------------------- response-only masking


def test_alpaca_masking_counts_exactly_the_response_and_eos():
    tok = char_tokenizer()
    ex = Example.from_alpaca("Say hi", "", "hi!")
    input_ids, labels = encode(ex, "alpaca", tok, SFTDataConfig(template="alpaca", max_length=512))

    prompt = ALPACA_PROMPT_NO_INPUT.replace("{instruction}", "Say hi")
    full = [tok.bos_token_id] + char_ids(tok, prompt) + char_ids(tok, "hi!") + [tok.eos_token_id]
    assert input_ids == full[:-1] and len(labels) == len(input_ids)
    # bos is position 0, the prompt fills 1..n, so the last prompt token ("\n" after "### Response:") sits
    # at n and predicts "h"; "h", "i", "!" predict "i", "!", eos. Nothing else counts.
    n = len(prompt)
    assert counted(labels) == [n, n + 1, n + 2, n + 3]
    assert [labels[t] for t in counted(labels)] == char_ids(tok, "hi!") + [tok.eos_token_id]


def test_alpaca_with_input_uses_the_input_prompt():
    tok = char_tokenizer()
    cfg = SFTDataConfig(max_length=512)
    ex = Example.from_alpaca("Add", "2 and 3", "5")
    input_ids, labels = encode(ex, "alpaca", tok, cfg)
    prompt = ALPACA_PROMPT.replace("{instruction}", "Add").replace("{input}", "2 and 3")
    assert input_ids == [tok.bos_token_id] + char_ids(tok, prompt) + char_ids(tok, "5")
    n = len(prompt)
    assert counted(labels) == [n, n + 1]
    assert [labels[n], labels[n + 1]] == [char_ids(tok, "5")[0], tok.eos_token_id]


def test_chat_masking_counts_each_assistant_turn_with_its_end_marker():
    tok = char_tokenizer(chat=True)
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"}, {"role": "user", "content": "bye"},
            {"role": "assistant", "content": "ok"}]
    input_ids, labels = encode(Example(msgs), "chat", tok, SFTDataConfig(max_length=512))

    v = tok.get_vocab()
    eos, sys_, usr, ast = v["</s>"], v["<|system|>"], v["<|user|>"], v["<|assistant|>"]
    c = lambda s: char_ids(tok, s)  # noqa: E731
    full = ([sys_] + c("be brief") + [eos] + [usr] + c("hi") + [eos] + [ast] + c("yo") + [eos]
            + [usr] + c("bye") + [eos] + [ast] + c("ok") + [eos])
    assert input_ids == full[:-1]  # the chat template supplies its own markers: no bos added
    a1 = full.index(ast) + 1  # first token of "yo"
    a2 = len(full) - 3  # first token of "ok"
    want = [a1 - 1, a1, a1 + 1, a2 - 1, a2, a2 + 1]  # positions predicting y, o, </s>, o, k, </s>
    assert counted(labels) == want
    assert [labels[t] for t in want] == c("yo") + [eos] + c("ok") + [eos]


def test_alpaca_template_on_chat_records_counts_each_assistant_turn():
    tok = char_tokenizer()
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    cfg = SFTDataConfig(max_length=512)
    input_ids, labels = encode(Example(msgs), "alpaca", tok, cfg)
    p1 = ALPACA_PROMPT_NO_INPUT.replace("{instruction}", "a")
    p2 = cfg.prompt_followup.replace("{instruction}", "c")
    full = [tok.bos_token_id] + char_ids(tok, p1 + "b") + [tok.eos_token_id] + char_ids(tok, p2 + "d") + [tok.eos_token_id]
    assert input_ids == full[:-1]
    i1 = 1 + len(p1)  # index of "b"
    i2 = i1 + 2 + len(p2)  # index of "d"
    assert counted(labels) == [i1 - 1, i1, i2 - 1, i2]


def test_truncation_keeps_max_length_and_shifted_labels():
    tok = char_tokenizer()
    cfg = SFTDataConfig(max_length=16)
    ids, labels = encode(Example.from_alpaca("x", "", "y"), "alpaca", tok, cfg)
    assert len(ids) == len(labels) == 16
    assert counted(labels) == []  # the prompt alone is longer than 16 tokens


def test_auto_template_picks_chat_template_when_present():
    assert resolve_template("auto", char_tokenizer(chat=True)) == "chat"
    assert resolve_template("auto", char_tokenizer()) == "alpaca"
    with pytest.raises(SFTDataError, match="no chat template"):
        resolve_template("chat", char_tokenizer())


# ----------------------------------------------------------------------------- files and bad records


def _write(tmp_path, name, obj):
    p = tmp_path / name
    if name.endswith(".jsonl"):
        p.write_text("".join(json.dumps(r) + "\n" for r in obj))
    else:
        p.write_text(json.dumps(obj))
    return str(p)


def test_loads_alpaca_json_and_chat_jsonl(tmp_path):
    a = _write(tmp_path, "a.json", [{"instruction": "i", "input": "", "output": "o"}, {"instruction": "j", "output": "p"}])
    b = _write(tmp_path, "b.jsonl", [{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "v"}]}])
    exs = load_examples(SFTDataConfig(paths=[a, b]))
    assert [e.messages[-1]["content"] for e in exs] == ["o", "p", "v"]
    assert exs[0].alpaca == {"instruction": "i", "input": "", "output": "o"} and exs[2].alpaca is None


@pytest.mark.parametrize(("records", "match"), [
    ([{"instruction": "i", "response": "o"}], r"record 0: missing or non-string field\(s\) \['output'\].*found keys \['instruction', 'response'\]"),
    ([{"prompt": "p"}], r"missing or non-string field\(s\) \['instruction', 'output'\]"),
    ([{"messages": [{"role": "bot", "content": "x"}]}], r"message 0 must be"),
    ([{"messages": [{"role": "user", "content": "x"}]}], r"no 'assistant' message"),
    ([], r"no records"),
])
def test_records_without_expected_fields_are_rejected(tmp_path, records, match):
    path = _write(tmp_path, "bad.json", records)
    with pytest.raises(SFTDataError, match=match):
        load_examples(SFTDataConfig(paths=[path]))


def test_missing_file_and_offline_hub_dataset_fail_fast(tmp_path, monkeypatch):
    with pytest.raises(SFTDataError, match="no file matches"):
        load_examples(SFTDataConfig(paths=[str(tmp_path / "nope.json")]))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(SFTDataError, match="cannot load hub dataset 'yahma/alpaca-cleaned'.*offline"):
        load_examples(SFTDataConfig(hub_dataset="yahma/alpaca-cleaned"))
    assert time.time() - t0 < 20


# ----------------------------------------------------------------------------- rows, packing, iterator


def _examples(n: int) -> list[Example]:
    return [Example.from_alpaca(f"q{i}", "", "a" * (1 + i % 7)) for i in range(n)]


def test_packing_never_splits_an_example_and_keeps_every_label():
    rows = [([1] * n, [5] * n) for n in (3, 4, 2, 6, 1)]
    packed = pack(rows, max_length=7)
    assert [len(ids) for ids, _ in packed] == [7, 2, 7]  # 3+4 | 2 (6 does not fit) | 6+1
    assert sum(sum(lab == 5 for lab in labs) for _, labs in packed) == 16


def test_build_sft_data_splits_and_packs():
    tok = char_tokenizer()
    cfg = SFTDataConfig(max_length=512, packing=True, eval_fraction=0.1)
    data = build_sft_data(cfg, tok, seed=0, examples=_examples(40))
    assert data.template == "alpaca" and len(data.eval) >= 1
    assert all(len(ids) <= 512 for ids, _ in data.train)
    unpacked = build_sft_data(SFTDataConfig(max_length=512, eval_fraction=0.1), tok, seed=0, examples=_examples(40))
    assert len(data.train) < len(unpacked.train)
    count = lambda rows: sum(sum(lab != IGNORE for lab in labs) for _, labs in rows)  # noqa: E731
    assert count(data.train) == count(unpacked.train)


def test_iterator_is_world_size_invariant_and_resumes_exactly():
    tok = char_tokenizer()
    data = build_sft_data(SFTDataConfig(max_length=512, eval_fraction=0.0), tok, seed=3, examples=_examples(10))
    single = SFTBatches(data, global_batch_size=4, seed=3)
    ranks = [SFTBatches(data, global_batch_size=4, dp_rank=r, dp_world=2, seed=3) for r in range(2)]
    for _ in range(6):  # 24 rows > 2 epochs of 10
        whole = next(single)
        halves = [next(it) for it in ranks]
        for key in ("input_ids", "labels"):
            assert torch.equal(whole[key], torch.cat([h[key] for h in halves]))
    # resume from the step-3 state onto world size 2 reproduces the later batches
    ref = SFTBatches(data, global_batch_size=4, seed=3)
    for _ in range(3):
        next(ref)
    state = ref.state_dict()
    expected = [next(ref) for _ in range(3)]
    resumed = SFTBatches(data, global_batch_size=4, dp_rank=1, dp_world=2, seed=3)
    resumed.load_state_dict(state)
    for exp in expected:
        assert torch.equal(next(resumed)["labels"], exp["labels"][2:])


def test_every_epoch_visits_every_row_once():
    tok = char_tokenizer()
    data = build_sft_data(SFTDataConfig(max_length=512, eval_fraction=0.0), tok, seed=1, examples=_examples(8))
    it = SFTBatches(data, global_batch_size=4, seed=1)
    seen = [tuple(r[0]) for s in range(2) for r in it.global_rows(s)]
    assert sorted(seen) == sorted(tuple(ids) for ids, _ in data.train)


def test_collate_and_eval_batches_pad_with_ignored_labels():
    batch = collate([([1, 2, 3], [2, 3, -100]), ([4], [9])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["labels"].tolist() == [[2, 3, -100], [9, -100, -100]]
    tok = char_tokenizer()
    data = build_sft_data(SFTDataConfig(max_length=512, eval_fraction=0.25), tok, seed=0, examples=_examples(20))
    shards = [eval_batches(data, micro_batch_size=2, dp_rank=r, dp_world=2) for r in range(2)]
    assert sum(b["input_ids"].shape[0] for s in shards for b in s) == len(data.eval) == 5


def test_bundled_alpaca_sample_encodes(tmp_path):
    path = os.environ.get("COD_TEST_ALPACA")
    if path is None:
        pytest.importorskip("cod_train.data.sample")
        from cod_train.data.sample import sample_path

        path = str(sample_path("alpaca"))
    exs = load_examples(SFTDataConfig(paths=[path]))
    assert len(exs) == 999
    data = build_sft_data(SFTDataConfig(max_length=512), char_tokenizer(), seed=0, examples=exs)
    assert data.stats["train_rows"] + data.stats["dropped_no_response"] + len(data.eval) == 999


def test_custom_prompt_is_used_and_bad_prompts_are_rejected():
    from cod_train.config import ConfigError

    tok = char_tokenizer()
    cfg = SFTDataConfig(prompt_no_input="Q: {instruction}\nA: ", max_length=512)
    cfg.validate()
    ids, labels = encode(Example.from_alpaca("2+2?", "", "4"), "alpaca", tok, cfg)
    assert ids == [tok.bos_token_id] + char_ids(tok, "Q: 2+2?\nA: 4")
    assert counted(labels) == [len("Q: 2+2?\nA: "), len("Q: 2+2?\nA: ") + 1]
    for bad, match in [("{question}", "not a valid format string"), ("no placeholder", "must contain")]:
        with pytest.raises(ConfigError, match=match):
            SFTDataConfig(prompt=bad).validate()
