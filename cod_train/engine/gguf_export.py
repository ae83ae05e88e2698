"""``format=gguf``: the Llama form of an export as one GGUF file (llama.cpp, ollama), written with ``gguf``.

The file holds llama.cpp's ``llama`` architecture: its tensor names, q/k rows permuted from transformers'
rotate-half RoPE layout to GGML's interleaved one (transformers' GGUF loader permutes them back), and the
tokenizer as GGUF metadata. Tokenizers: byte-level BPE (GPT-2 style, cod-train's ``train:<vocab>``); the model's
rows beyond the tokenizer (the vocabulary is padded to a multiple of 64) get placeholder tokens. The pre-tokenizer
is named ``gpt-2`` (``PRE_TOKENIZER``), llama.cpp's name for the GPT-2 regex that ``tokenizers``' ByteLevel
pre-tokenizer applies (``'s|'t|... ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``: runs of digits stay one
piece, letters of every script are letters); llama.cpp refuses a name it does not know.
Types: ``f32``; ``f16`` and ``q8_0`` for matrices (1-D norm weights stay f32, as llama.cpp keeps them; a
matrix whose rows are not a multiple of 32 falls back to f16 under q8_0).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from cod_train.core.errors import ConfigError

# tokenizer.ggml.pre: llama.cpp (src/llama-vocab.cpp) maps "gpt-2" to LLAMA_VOCAB_PRE_TYPE_GPT2, the regex above
PRE_TOKENIZER = "gpt-2"

LAYER_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}
TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}


def gguf_name(name: str) -> str:
    """llama.cpp's name of a LlamaForCausalLM parameter."""
    if name in TOP_NAMES:
        return TOP_NAMES[name]
    parts = name.split(".")  # model.layers.{i}.{module...}.{weight|bias}
    return f"blk.{parts[2]}.{LAYER_NAMES['.'.join(parts[3:-1])]}.{parts[-1]}"


def to_ggml_rope(w: np.ndarray, heads: int) -> np.ndarray:
    """q/k rows from rotate-half (first half, second half of each head) to interleaved pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tokenizer_problem(tokenizer_json: Path) -> str | None:
    """Why this tokenizer cannot go into a GGUF file (None: it can)."""
    if not tokenizer_json.is_file():
        return "the export has no tokenizer.json"
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    pre = spec.get("pre_tokenizer") or {}
    gpt2_style = (pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
                  and not pre.get("add_prefix_space", False))
    if (spec.get("model") or {}).get("type") != "BPE" or not gpt2_style or spec.get("normalizer"):
        settings = ", ".join(f"{k}={pre.get(k)}" for k in ("use_regex", "add_prefix_space") if k in pre)
        return ("format=gguf writes byte-level BPE tokenizers (GPT-2 style: ByteLevel with its regex, no prefix "
                f"space, no normalizer; cod-train's train:<vocab>); this one is {(spec.get('model') or {}).get('type')}"
                f" with pre-tokenizer {pre.get('type')}{f' ({settings})' if settings else ''}"
                f"{' and a normalizer' if spec.get('normalizer') else ''}")
    return None


def _add_tokenizer(writer: Any, out: Path, vocab_size: int) -> None:
    import gguf

    spec = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    vocab: dict[str, int] = dict(spec["model"]["vocab"])
    special = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    vocab.update(special)
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    for token, i in vocab.items():
        tokens[i] = token
        types[i] = gguf.TokenType.CONTROL if token in special else gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZER)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text()) if (out / "tokenizer_config.json").is_file() else {}
    for key, add in (("eos_token", writer.add_eos_token_id), ("bos_token", writer.add_bos_token_id),
                     ("pad_token", writer.add_pad_token_id)):
        value = tok_cfg.get(key)
        content = value.get("content") if isinstance(value, dict) else value
        if isinstance(content, str) and content in vocab:
            add(vocab[content])
    writer.add_add_bos_token(False)


def _add_hparams(writer: Any, config: dict[str, Any], file_type: int) -> None:
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope = config.get("rope_parameters") or {}
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(file_type)


def _encode(w: np.ndarray, gguf_type: str) -> tuple[np.ndarray, Any]:
    import gguf

    if w.ndim == 1 or gguf_type == "f32":
        return w.astype(np.float32), None
    if gguf_type == "q8_0" and w.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        q8 = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(w.astype(np.float32), q8), q8
    return w.astype(np.float16), None


def write_gguf(out: Path, gguf_type: str = "f16") -> Path:
    """Write ``out/model-<gguf_type>.gguf`` from the Llama export already saved in ``out``."""
    import gguf

    logging.getLogger("gguf").setLevel(logging.WARNING)  # its writer logs every file's layout at INFO
    problem = tokenizer_problem(out / "tokenizer.json")
    if problem:
        raise ConfigError(problem)
    config = json.loads((out / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise ConfigError(f"format=gguf needs a Llama export, got model_type {config.get('model_type')!r}")
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]
    path = out / f"model-{gguf_type}.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(out.name)
    _add_hparams(writer, config, int(file_type))
    _add_tokenizer(writer, out, config["vocab_size"])
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    state = {k: v for f in sorted(out.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    for name, tensor in state.items():
        w = tensor.to(torch.float32).numpy()
        if ".self_attn.q_proj." in name:
            w = to_ggml_rope(w, heads)
        elif ".self_attn.k_proj." in name:
            w = to_ggml_rope(w, kv_heads)
        data, raw_dtype = _encode(w, gguf_type)
        writer.add_tensor(gguf_name(name), data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
