"""The model card of an export (the whole scheme, the checkpoint's step and tokens, a usage snippet that runs as
written), and push_to_hub's fast, clean refusal when the Hub cannot be reached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from huggingface_hub import ModelCard

from cod_train.cli import export
from cod_train.engine.export import save_hf
from tests.helpers.cli import run_command
from tests.helpers.models import tiny_model


def _fake_run(root):
    (root / "config.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text("model:\n  norm_type: lns\ndata:\n  source: c4\n  hub_dataset: allenai/c4\n"
                                      "  tokenizer: t5-base\n  seq_len: 256\ntrain:\n  max_steps: 7\n"
                                      "  global_batch_size: 4\n  lr: 0.001\n  precision: fp32\n")
    rows = [{"step": 1, "loss": 5.0, "tokens": 1024}, {"step": 7, "loss": 4.0, "tokens": 7168}]
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "eval.json").write_text(json.dumps({"perplexity": {"eval_ppl": 123.5}, "downstream": {
        "arc_easy": {"acc": 0.31, "n": 20}}}))


def test_model_card_describes_the_run(tmp_path):
    run = tmp_path / "run"
    _fake_run(run)
    save_hf(tiny_model(random_norms=True, norm_type="lns"), run / "hf")
    card = ModelCard.load(run / "hf" / "README.md")
    assert card.data.library_name == "transformers" and "lns" in card.data.tags
    assert card.data.datasets == ["allenai/c4"]
    text = card.text
    assert "N1(x) / sqrt(l)" in text and "LlamaForCausalLM" in text  # placement equation, exported class
    assert "| num_hidden_layers | 4 |" in text  # sizes
    assert "tokens seen" not in text and "this checkpoint" not in text  # no checkpoint to read them from
    assert "123.5" in text and "| arc_easy | acc | 0.31 |" in text  # eval.json
    assert "max_steps: 7" in text  # the run's config
    assert "trust_remote_code" not in text


def _snippet(card_text: str) -> str:
    return card_text.split("```python\n", 1)[1].split("```", 1)[0]


def _run_snippet(code: str, cwd) -> str:
    """The card's usage snippet as a user runs it: a fresh Python, offline, nothing typed in; its output."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "custom code" not in proc.stdout + proc.stderr, (code, proc.stderr[-3000:])
    return proc.stdout


def _meta(ckpt) -> dict:
    return json.loads((ckpt / "meta.json").read_text())


def test_mhc_checkpoint_card_describes_its_scheme_and_step_and_its_snippet_runs(tiny_run, tmp_path):
    """cod-export of an earlier checkpoint of an mHC run: the card names the whole scheme (placement, mHC and
    its streams), that checkpoint's step and tokens (not the configured maximum, not the last logged row), and
    its remote-code snippet runs as written."""
    run = tiny_run("residual=mhc")
    ckpt = run / "checkpoints" / "step_0000002"
    out = tmp_path / "mhc-export"
    assert run_command(export.main, "cod-export", f"checkpoint={ckpt}", f"out={out}") == 0
    card = ModelCard.load(out / "README.md")
    assert {"pre-ln", "mhc", "hyper-connections", "custom_code"} <= set(card.data.tags)
    text = card.text
    assert "scheme `pre_ln+mhc4`" in text and "manifold-constrained Hyper-Connections (mHC) over 4 residual " \
        "streams" in text
    assert "| residual | mhc |" in text and "| hc_streams | 4 |" in text and "| hc_collapse | head |" in text
    assert "pre_ln: h = x (+) Attn(N1(x))" in text and "mhc: h = pre^T H" in text and "H' = res^T H + post^T F(h)" in text
    tokens = _meta(ckpt)["tokens"]
    assert tokens == 2 * 4 * 32  # 2 steps of 4 sequences of 32 tokens
    assert f"step 2 of the 3 configured (train.max_steps), {tokens:,} tokens seen" in text
    assert f"{_meta(run / 'checkpoints' / 'step_0000003')['tokens']:,}" not in text
    snippet = _snippet(text)
    assert snippet.count("trust_remote_code=True") == 2 and repr(str(out)) in snippet
    assert _run_snippet(snippet, tmp_path).startswith("The capital of France is")


def test_end_of_run_llama_card_gives_the_final_step_and_its_snippet_runs(tiny_run, tmp_path):
    run = tiny_run()
    text = ModelCard.load(run / "hf" / "README.md").text
    assert "`LlamaForCausalLM`, a class transformers ships." in text and "scheme `pre_ln`" in text
    tokens = _meta(run / "checkpoints" / "step_0000003")["tokens"]
    assert f"step 3 of the 3 configured (train.max_steps), {tokens:,} tokens seen" in text
    snippet = _snippet(text)
    assert "trust_remote_code" not in snippet
    assert _run_snippet(snippet, tmp_path).startswith("The capital of France is")


def test_remote_code_card_says_how_to_load(tmp_path):
    save_hf(tiny_model(random_norms=True, norm_type="post_ln"), tmp_path / "x")
    text = (tmp_path / "x" / "README.md").read_text()
    assert "trust_remote_code=True" in text and "custom_code" in text


def test_push_to_hub_offline_fails_fast_with_nothing_written(tmp_path, monkeypatch, capsys):
    src = tmp_path / "src"
    save_hf(tiny_model(random_norms=True, norm_type="pre_ln"), src)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(sys, "argv", ["cod-export", f"checkpoint={src}", f"out={tmp_path / 'out'}",
                                      "push_to_hub=me/tiny-model"])
    capsys.readouterr()
    t0 = time.monotonic()
    try:
        export.main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    elapsed = time.monotonic() - t0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and elapsed < 2.0, (code, elapsed)
    assert len(lines) == 1 and "push_to_hub=me/tiny-model" in lines[0] and "HF_HUB_OFFLINE" in lines[0]
    assert not (tmp_path / "out").exists()


def test_push_to_hub_offline_is_refused_before_torch_is_imported(tmp_path):
    """As a fresh command the refusal must not wait for torch and transformers to import (seconds on a busy
    machine): the hub check comes first, and torch is still absent when the command exits."""
    code = ("import sys\n"
            f"sys.argv = ['cod-export', 'checkpoint={tmp_path}/none', 'out={tmp_path}/out', 'push_to_hub=me/m']\n"
            "from cod_train.cli.export import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n    print('EXIT', e.code, 'torch' in sys.modules)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "EXIT 2 False" in out.stdout, (out.stdout, out.stderr[-500:])
    assert "push_to_hub=me/m" in out.stderr and not (tmp_path / "out").exists()
