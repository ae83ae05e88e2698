"""format=gguf read by llama.cpp itself (xllamacpp: the prebuilt CPU wheel of one pinned llama.cpp build, the
`llamacpp` extra that `make install` installs): for Pre-LN and LNS exports of each type, llama.cpp loads the file,
tokenizes text with digits, non-ASCII letters, whitespace runs and the special token as the Hugging Face tokenizer
does, and decodes the same greedy tokens as transformers with next-token probabilities within the type's
precision. llama.cpp runs as its own server does (its HTTP endpoint on 127.0.0.1 serves the tokenizer)."""

from __future__ import annotations

import json
import math
import urllib.request

import pytest
import torch
from transformers import AutoModelForCausalLM

from cod_train.cli import export
from cod_train.config import ModelConfig
from cod_train.data.tokenizer import train_bpe
from cod_train.engine.export import save_hf
from cod_train.model import build_model
from tests.helpers.cli import run_command

xllamacpp = pytest.importorskip(
    "xllamacpp", reason="llama.cpp (the xllamacpp wheel of the `llamacpp` extra) is not installed: `make install` "
    "installs it")

pytestmark = pytest.mark.slow  # trains two models, then runs llama.cpp on 6 exports
CORPUS = [f"In {1900 + i} the naïve café of 東京 sold {i * 37} Ünïcödé books for €{i % 50},  said the curse "
          f"of depth.\n" for i in range(400)]
TEXT = ("The naïve café sold 1234567 books in 1987; Ünïcödé costs €42!\n\n  two  spaces\tand a tab, "
        "東京 3.14159<|endoftext|>the end ")
PROMPT = "Ünïcödé books for €7,  said the"  # what follows is the corpus's fixed text: decisive choices
STEPS = 5
# max |p_llama.cpp - p_transformers| over the whole vocabulary at every greedy step. Measured (xllamacpp
# 2026.10.11549, x86-64): f32 1.3e-5 (the same weights; llama.cpp's own kernels and their reduced-precision
# steps), f16 1.4e-5 (weights rounded to 11 significant bits: 2^-11 relative, below llama.cpp's own error here),
# q8_0 7.7e-5 (weights and activations in blocks of 32 on 8 bits: 1/254 of each block's maximum). The
# tolerances leave about 8x for other CPUs' kernels and keep the types' order.
TOL = {"f32": 1e-4, "f16": 2e-4, "q8_0": 1e-3}


def _trained(tok, norm_type: str) -> torch.nn.Module:
    """A tiny model trained briefly on the corpus: its greedy choices are decisive, not near-ties."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                    norm_type=norm_type), len(tok))
    ids = torch.tensor([t for line in CORPUS for t in tok(line)["input_ids"]])
    batches = ids[: len(ids) // 32 * 32].view(-1, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(100):
        batch = batches[torch.randint(0, len(batches), (16,), generator=torch.Generator().manual_seed(step))]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{(norm_type, type): (GGUF path, transformers' model of the same export)}, written by cod-export."""
    torch.set_num_threads(1)  # before the per-test fixture that does it: training here is the bulk of the time
    tmp = tmp_path_factory.mktemp("llama_cpp")
    tok = train_bpe(iter(CORPUS), 400)
    out = {}
    for norm_type in ("pre_ln", "lns"):
        source = tmp / norm_type
        save_hf(_trained(tok, norm_type), source, tok)
        reference = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
        for gguf_type in TOL:
            dest = tmp / f"{norm_type}-{gguf_type}"
            code = run_command(export.main, "cod-export", f"checkpoint={source}", f"out={dest}", "format=gguf",
                               f"gguf_type={gguf_type}")
            assert code == 0
            out[norm_type, gguf_type] = dest / f"model-{gguf_type}.gguf", reference
    return tok, out


def _server(path, gguf_type: str) -> xllamacpp.Server:
    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.n_ctx = 64
    if gguf_type == "f32":  # llama.cpp's KV cache is f16 by default; all f32 computes the f32 file exactly
        params.cache_type_k = params.cache_type_v = xllamacpp.ggml_type.GGML_TYPE_F32
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = 1
    params.verbosity = -1
    return xllamacpp.Server(params)


def _tokenize(server: xllamacpp.Server, text: str) -> list[int]:
    request = urllib.request.Request(f"{server.listening_address}/tokenize", method="POST",
                                     data=json.dumps({"content": text, "add_special": False,
                                                      "parse_special": True}).encode("utf-8"),
                                     headers={"Content-Type": "application/json"})
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy
    with no_proxy.open(request, timeout=60) as response:
        return json.loads(response.read())["tokens"]


def _greedy_llama(server: xllamacpp.Server, prompt: list[int], vocab: int) -> tuple[list[int], torch.Tensor]:
    """llama.cpp's greedy tokens after ``prompt`` and, at each step, its probabilities over the whole vocabulary
    (from the raw logits: post_sampling_probs off)."""
    result = server.handle_completions({"prompt": prompt, "n_predict": STEPS, "temperature": 0.0, "top_k": 1,
                                        "n_probs": vocab, "post_sampling_probs": False, "ignore_eos": True,
                                        "cache_prompt": False})
    steps = result["choices"][0]["logprobs"]["content"]
    probs = torch.zeros(len(steps), vocab, dtype=torch.float64)
    for i, step in enumerate(steps):
        for top in step["top_logprobs"]:
            probs[i, top["id"]] = math.exp(top["logprob"])
    return [step["id"] for step in steps], probs


def _greedy_transformers(model, prompt: list[int]) -> tuple[list[int], torch.Tensor]:
    seq = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(STEPS):
            seq = torch.cat([seq, model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        logits = model(input_ids=seq).logits[0, len(prompt) - 1:-1].double()
    return seq[0, len(prompt):].tolist(), logits.softmax(-1)


@pytest.mark.parametrize("gguf_type", list(TOL))
@pytest.mark.parametrize("norm_type", ["pre_ln", "lns"])
def test_llama_cpp_agrees_with_transformers(exports, norm_type, gguf_type):
    tok, files = exports
    path, reference = files[norm_type, gguf_type]
    server = _server(path, gguf_type)  # before the fix: "unknown pre-tokenizer type: 'gpt2'"

    assert _tokenize(server, TEXT) == tok(TEXT)["input_ids"]

    prompt = tok(PROMPT)["input_ids"]
    want_tokens, want = _greedy_transformers(reference, prompt)
    top2 = want.topk(2, dim=-1).values
    assert (top2[:, 0] - top2[:, 1]).min() > 2 * TOL[gguf_type]  # decisive choices: rounding cannot flip them
    got_tokens, got = _greedy_llama(server, prompt, reference.config.vocab_size)
    assert got_tokens == want_tokens
    assert (got - want).abs().max() <= TOL[gguf_type]
    assert got.sum(-1).sub(1).abs().max() < 1e-4  # every token's probability came back
