"""format=gguf: read back by transformers' GGUF loader (in a Python without cod_train), same logits within
each type's precision, the same greedy tokens in f32, the same token ids as the trained tokenizer."""

from __future__ import annotations

import pytest
import torch

from cod_train.config import ModelConfig
from cod_train.data.tokenizer import train_bpe
from cod_train.engine.export import ExportOptions, save_hf
from cod_train.model import build_model

from .conftest import load_isolated, rel_diff

TEXT = "The curse of depth: deeper layers of large language models contribute little. Ünïcödé, 42 €!<|endoftext|>"
TOL = {"f32": 1e-5, "f16": 5e-3, "q8_0": 5e-2}  # relative max logit error: f32 exact, f16 / q8_0 rounding


@pytest.fixture(scope="module")
def gguf_exports(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("gguf")
    corpus = [f"the curse of depth in large language models, deep layers contribute little {i}. " * 2
              for i in range(300)]
    tok = train_bpe(iter(corpus), 400)
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, max_position_embeddings=64, norm_type="lns"),
                        len(tok)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(0.5 + torch.rand_like(p))
    ids = torch.tensor([tok(TEXT)["input_ids"][:24]])
    jobs = []
    for t in TOL:
        save_hf(model, tmp / t, tok, fmt="gguf", options=ExportOptions(gguf_type=t))
        jobs.append({"dir": str(tmp / t), "gguf": f"model-{t}.gguf", "ids": ids, "text": TEXT, "new": 6})
    results = dict(zip(TOL, load_isolated(jobs, tmp)["jobs"], strict=True))
    return model, tok, ids, results


@pytest.mark.parametrize("gguf_type", list(TOL))
def test_gguf_reads_back_with_same_logits_and_token_ids(gguf_exports, gguf_type):
    model, tok, ids, results = gguf_exports
    res = results[gguf_type]
    assert "error" not in res, res.get("error")
    assert res["class"] == "LlamaForCausalLM"
    with torch.no_grad():
        want = model(input_ids=ids).logits
    assert rel_diff(res["logits"], want) <= TOL[gguf_type]
    assert res["token_ids"] == tok(TEXT)["input_ids"]
    if gguf_type == "f32":
        greedy = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert torch.equal(res["greedy"], greedy)


def test_gguf_quantized_types_are_what_they_say(gguf_exports, tmp_path):
    import gguf

    model, tok, _, _ = gguf_exports
    save_hf(model, tmp_path / "q", tok, fmt="gguf", options=ExportOptions(gguf_type="q8_0"))
    reader = gguf.GGUFReader(str(tmp_path / "q" / "model-q8_0.gguf"))
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    # LNS's 1/sqrt(l) is in the norm weights of layer 2 (l = 2), as in the Llama export
    norm = torch.from_numpy(reader.get_tensor(
        [i for i, t in enumerate(reader.tensors) if t.name == "blk.1.attn_norm.weight"][0]).data.copy())
    torch.testing.assert_close(norm, model.model.layers[1].input_layernorm.weight.detach() / 2 ** 0.5)
