"""cod-analyze end to end on tiny HF directories (in-process) and its bad-input handling (subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cod_train.config import ConfigError
from cod_train.runs.analyze import AnalyzeConfig, AnalyzeOptions, analyze_command, run
from tests.helpers.analyze_runs import text_file, write_hf_run


def test_analyze_two_models_writes_json_and_png(tmp_path: Path) -> None:
    runs = [write_hf_run(tmp_path, "pre"), write_hf_run(tmp_path, "lns", norm_type="lns", layers=4)]
    out = tmp_path / "compare"
    cfg = AnalyzeConfig(
        checkpoint=[str(runs[0]), str(runs[1] / "hf")],
        run_dir=str(out),
        analyze=AnalyzeOptions(text_path=[str(text_file(tmp_path))], eval_tokens=256, seq_len=32),
    )
    written = run(cfg)
    names = sorted(p.name for p in written)
    stems = ["angular_distance", "grad_norms", "layer_pruning", "layer_variance", "block_influence", "logit_lens",
             "sublayer_contribution", "skip_effect"]  # fmt: skip
    expected = [f"{s}.json" for s in stems] + [f"{s}.png" for s in stems] + ["depth_summary.json"]
    assert names == sorted(expected)
    summary = json.loads((out / "analysis" / "depth_summary.json").read_text())["models"]
    assert [m["label"] for m in summary] == ["pre", "lns"]
    lens = json.loads((out / "analysis" / "logit_lens.json").read_text())["models"]
    assert [s["settling_depth"] for s in summary] == [m["settling_depth"] for m in lens]
    skip = json.loads((out / "analysis" / "skip_effect.json").read_text())["models"]
    assert [len(m["change"]) for m in skip] == [3, 4]
    variance = json.loads((out / "analysis" / "layer_variance.json").read_text())
    assert [m["label"] for m in variance["models"]] == ["pre", "lns"]
    assert [len(m["layer_var"]) for m in variance["models"]] == [3, 4]
    assert variance["models"][1]["norm_type"] == "lns"
    assert variance["models"][0]["eval_tokens"] == 256
    pruning = json.loads((out / "analysis" / "layer_pruning.json").read_text())
    assert len(pruning["models"][1]["delta_ppl"]) == 4


def test_single_run_writes_into_its_run_dir(tmp_path: Path) -> None:
    run_dir = write_hf_run(tmp_path, "pre")
    cfg = AnalyzeConfig(
        checkpoint=[str(run_dir / "hf")],
        analyze=AnalyzeOptions(
            diagnostics=["variance"], text_path=[str(text_file(tmp_path))], eval_tokens=64, seq_len=16
        ),
    )
    run(cfg)
    assert sorted(p.name for p in (run_dir / "analysis").iterdir()) == [
        "layer_variance.json",
        "layer_variance.png",
    ]


def test_bad_options_fail_before_work(tmp_path: Path) -> None:
    run_dir = write_hf_run(tmp_path, "pre")
    with pytest.raises(ConfigError, match="unknown"):
        run(AnalyzeConfig(checkpoint=[str(run_dir)], analyze=AnalyzeOptions(diagnostics=["nope"])))
    with pytest.raises(ConfigError, match="labels"):
        run(AnalyzeConfig(checkpoint=[str(run_dir)], labels=["a", "b"]))
    opts = AnalyzeOptions()
    opts.downstream.tasks = ["no_such_task"]
    with pytest.raises(ConfigError, match="unknown downstream task"):
        run(AnalyzeConfig(checkpoint=[str(run_dir)], analyze=opts))


def test_bad_input_is_one_line_before_any_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cod_train.runs.models as models

    def no_loading(*_a: object, **_k: object) -> None:
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(models, "load_model", no_loading)
    run_dir = write_hf_run(tmp_path, "pre", layers=3)
    text = text_file(tmp_path)
    with pytest.raises(ConfigError, match=r"analyze.layers: \[4\] out of range .* has layers 1..3"):
        run(
            AnalyzeConfig(
                checkpoint=[str(run_dir)], analyze=AnalyzeOptions(layers=[2, 4], text_path=[str(text)])
            )
        )
    with pytest.raises(ConfigError, match="numbered from 1"):
        run(AnalyzeConfig(checkpoint=[str(run_dir)], analyze=AnalyzeOptions(layers=[0])))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ConfigError, match="empty.txt' is empty"):
        run(AnalyzeConfig(checkpoint=[str(run_dir)], analyze=AnalyzeOptions(text_path=[str(empty)])))
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(
        tmp_path / "gpt2"
    )
    with pytest.raises(ConfigError, match="GPT2LMHeadModel does not have the LLaMA layout"):
        run(AnalyzeConfig(checkpoint=[str(tmp_path / "gpt2")], analyze=AnalyzeOptions(text_path=[str(text)])))


def test_layers_subset_end_to_end(tmp_path: Path) -> None:
    run_dir = write_hf_run(tmp_path, "pre", layers=4)
    opts = AnalyzeOptions(diagnostics=["pruning", "skip_effect"], layers=[4, 2], text_path=[str(text_file(tmp_path))],
                          eval_tokens=128, seq_len=16, progress=False)  # fmt: skip
    run(AnalyzeConfig(checkpoint=[str(run_dir)], analyze=opts))
    pruning = json.loads((run_dir / "analysis" / "layer_pruning.json").read_text())["models"][0]
    assert pruning["layers"] == [2, 4] and len(pruning["ppl"]) == 2
    skip = json.loads((run_dir / "analysis" / "skip_effect.json").read_text())["models"][0]
    assert skip["layers"] == [2, 4] and skip["change"][1] == [None] * 4  # nothing after the last layer


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    code = "from cod_train.cli.analyze import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_not_a_checkpoint_exits_2_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    res = _cli(f"checkpoint=[{tmp_path / 'junk'},{tmp_path / 'missing'}]", cwd=tmp_path)
    assert res.returncode == 2
    assert "is a directory but not a model" in res.stderr and res.stderr.startswith("error:")
    assert "Traceback" not in res.stderr + res.stdout
    assert not (tmp_path / "runs").exists()  # nothing was written


def test_hydra_config_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from hydra import compose, initialize_config_dir

    from cod_train.runs.app import config_dir, run_typed

    run_dir = write_hf_run(tmp_path, "pre")
    overrides = [
        f"checkpoint={run_dir}",
        f"analyze.text_path=[{text_file(tmp_path)}]",
        "analyze.eval_tokens=128",
        "analyze.seq_len=16",
        "analyze.diagnostics=[angular,grad_norms]",
    ]
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        assert run_typed(analyze_command, compose("analyze", overrides=overrides), AnalyzeConfig) == 0
        assert (run_dir / "analysis" / "angular_distance.png").is_file()
        assert (run_dir / "analysis" / "grad_norms.json").is_file()
        bad = compose("analyze", overrides=[f"checkpoint={tmp_path / 'heldout.txt'}"])
        assert run_typed(analyze_command, bad, AnalyzeConfig) == 2
    assert "is a file, not a checkpoint directory" in capsys.readouterr().err
