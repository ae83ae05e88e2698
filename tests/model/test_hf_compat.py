"""Interoperability with transformers: LlamaForCausalLM weights, Auto classes, generate, save/load."""

import json

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import cod_train  # noqa: F401  (registers cod_llama)
from cod_train.model import CodLlamaConfig, CodLlamaForCausalLM
from tests.helpers.generate import left_padded_prompt, manual_greedy
from tests.helpers.models import tiny_model


def _llama_twin(model):
    c = model.config
    keys = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "vocab_size", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings"]
    ref = LlamaForCausalLM(LlamaConfig(**{k: getattr(c, k) for k in keys}, rope_parameters=c.rope_parameters))
    ref.load_state_dict(model.state_dict(), strict=True)
    return ref.eval()


def test_pre_ln_state_dict_loads_into_llama_with_same_logits():
    model = tiny_model(norm_type="pre_ln").eval()
    ref = _llama_twin(model)
    ids = torch.randint(0, 96, (3, 17))
    torch.testing.assert_close(model(input_ids=ids).logits, ref(input_ids=ids).logits, rtol=1e-6, atol=1e-6)


def test_loss_conventions_match_llama():
    model = tiny_model().eval()
    ref = _llama_twin(model)
    ids = torch.randint(0, 96, (2, 12))
    labels = ids.clone()
    labels[0, :4] = -100
    torch.testing.assert_close(model(input_ids=ids, labels=labels).loss, ref(input_ids=ids, labels=labels).loss)
    shifted = torch.randint(0, 96, (2, 12))
    shifted[1, 5:] = -100
    got = model(input_ids=ids, labels=shifted, shift_labels=shifted, num_items_in_batch=7).loss
    want = ref(input_ids=ids, labels=shifted, shift_labels=shifted, num_items_in_batch=7).loss
    torch.testing.assert_close(got, want)


ALL_NORMS = ["pre_ln", "post_ln", "mix_ln", "lns", "deepnorm", "sandwich_ln", "peri_ln", "ngpt"]
AXES = {"ngpt": {"num_key_value_heads": 4}}  # nGPT's s_qk is shared by q and k: no grouped KV heads


@pytest.mark.parametrize("norm_type", ALL_NORMS)
def test_generate_with_cache_equals_without_and_manual_loop(norm_type):
    """Batched, left-padded greedy decoding: generate() with the KV cache == without == a hand-written loop,
    whatever name (`cache` / `past_key_values`) the installed transformers hands the cache over with."""
    model = tiny_model(norm_type=norm_type, **AXES.get(norm_type, {})).eval()
    prompt, mask = left_padded_prompt()
    kw = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0)
    cached = model.generate(prompt, **kw)
    uncached = model.generate(prompt, use_cache=False, **kw)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, manual_greedy(model, prompt, mask, 10))


@pytest.mark.parametrize("norm_type", ALL_NORMS)
def test_sampling_with_cache_equals_without(norm_type):
    model = tiny_model(norm_type=norm_type, **AXES.get(norm_type, {})).eval()
    prompt, mask = left_padded_prompt()
    outs = []
    for use_cache in (True, False):
        torch.manual_seed(7)
        outs.append(model.generate(prompt, attention_mask=mask, do_sample=True, top_k=20, max_new_tokens=10,
                                   use_cache=use_cache, pad_token_id=0))
    assert torch.equal(*outs)


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_forward_reads_the_kv_cache_under_either_name(name):
    """Prefill + one cached step equals the last position of a full forward, for both names of the cache."""
    from transformers.cache_utils import DynamicCache

    model = tiny_model(norm_type="lns").eval()
    ids = torch.randint(0, 96, (2, 9))
    cache = DynamicCache(config=model.config)
    model(input_ids=ids[:, :-1], use_cache=True, **{name: cache})
    assert cache.get_seq_length() == 8
    step = model(input_ids=ids[:, -1:], use_cache=True, **{name: cache}).logits[:, -1]
    torch.testing.assert_close(step, model(input_ids=ids).logits[:, -1], rtol=1e-5, atol=1e-5)


def test_a_cache_under_an_unknown_name_is_an_error_not_ignored():
    from transformers.cache_utils import DynamicCache

    model = tiny_model().eval()
    ids = torch.randint(0, 96, (1, 4))
    cache = DynamicCache(config=model.config)
    with pytest.raises(TypeError, match="kv_cache"):
        model(input_ids=ids, kv_cache=cache)
    with pytest.raises(ValueError, match="not both"):
        model(input_ids=ids, cache=cache, past_key_values=DynamicCache(config=model.config))


def test_left_padded_batch_generates_like_llama():
    model = tiny_model().eval()
    ref = _llama_twin(model)
    prompt = torch.randint(1, 96, (2, 7))
    mask = torch.ones_like(prompt)
    mask[1, :3] = 0
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(prompt, **kw), ref.generate(prompt, **kw))


def test_save_and_load_round_trip_is_bit_exact(tmp_path):
    model = tiny_model(norm_type="peri_ln", scaled_init=True)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "cod_llama"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(loaded, CodLlamaForCausalLM) and loaded.config.norm_type == "peri_ln"
    for (n1, a), (n2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(a, b)


def test_auto_config_for_model_and_no_remote_code(tmp_path):
    cfg = AutoConfig.for_model("cod_llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, vocab_size=50, norm_type="lns", mix_ln_ratio=0.5)
    assert isinstance(cfg, CodLlamaConfig) and cfg.norm_type == "lns"
    model = AutoModelForCausalLM.from_config(cfg)
    assert isinstance(model, CodLlamaForCausalLM) and model.config.mix_ln_ratio == 0.5
    cfg.save_pretrained(tmp_path)
    assert "auto_map" not in json.loads((tmp_path / "config.json").read_text())
    again = AutoConfig.from_pretrained(tmp_path)  # no trust_remote_code needed
    assert type(again) is CodLlamaConfig and again.norm_type == "lns"


def test_transformers_version_is_v5():
    assert int(transformers.__version__.split(".")[0]) >= 5


def test_pre_ln_export_directory_loads_as_llama(tmp_path):
    """Someone without cod_train's model code can still read a pre_ln export with LlamaForCausalLM."""
    model = tiny_model(norm_type="pre_ln").eval()
    model.save_pretrained(tmp_path)
    ref = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 96, (2, 11))
    torch.testing.assert_close(ref(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-6, atol=1e-6)
