"""cod-analyze's inputs: a word-level tokenizer, a held-out text of its words and run directories holding a tiny
hf/ export (HF Llama or ours)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

WORDS = "the curse of depth in large language models deep layers contribute little under pre norm".split()


def tiny_tokenizer(tmp: Path) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over WORDS (plus <unk> and </s>)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token="</s>", pad_token="</s>"
    )


def write_hf_run(root: Path, name: str, *, norm_type: str | None = None, layers: int = 3) -> Path:
    """A run directory with an hf/ export of a tiny model (ours when norm_type is given, else HF Llama)."""
    torch.manual_seed(0)
    shape = dict(
        vocab_size=32,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=64,
    )
    if norm_type is None:
        model = LlamaForCausalLM(LlamaConfig(**shape))
    else:
        from cod_train.model import CodLlamaConfig, CodLlamaForCausalLM

        model = CodLlamaForCausalLM(CodLlamaConfig(**shape, norm_type=norm_type))
    run_dir = root / name
    model.save_pretrained(run_dir / "hf")
    tiny_tokenizer(root).save_pretrained(run_dir / "hf")
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n')
    return run_dir


def text_file(root: Path) -> Path:
    """heldout.txt: 900 random WORDS (seed 0)."""
    gen = torch.Generator().manual_seed(0)
    words = [WORDS[i] for i in torch.randint(0, len(WORDS), (900,), generator=gen).tolist()]
    path = root / "heldout.txt"
    path.write_text(" ".join(words))
    return path
