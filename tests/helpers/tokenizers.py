"""A character-level tokenizer (one token per character, so positions are hand-computable) and a tiny saved
Hugging Face model using it."""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<s>", "</s>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]


def char_tokenizer(chat: bool = False, bos: bool = True) -> PreTrainedTokenizerFast:
    chars = sorted(set(string.printable))
    vocab = {tok: i for i, tok in enumerate(SPECIALS + ROLE_TOKENS + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                 bos_token="<s>" if bos else None)
    hf.add_special_tokens({"additional_special_tokens": ROLE_TOKENS})
    if chat:
        hf.chat_template = CHAT_TEMPLATE
    return hf


def char_ids(tok: PreTrainedTokenizerFast, text: str) -> list[int]:
    """Independent encoding: one vocabulary lookup per character."""
    vocab = tok.get_vocab()
    return [vocab[c] for c in text]


def write_hf_model(path, layers: int = 2, chat: bool = False) -> str:
    """A tiny random LlamaForCausalLM plus the char tokenizer, saved as an HF directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = char_tokenizer(chat=chat)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=2, max_position_embeddings=512)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
