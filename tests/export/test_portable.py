"""Exports load without cod-train and compute what the trained model computes, for every scheme."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from cod_train.engine.export import save_hf
from cod_train.engine.remote_code import check_imports, generate_modeling_source
from cod_train.model.portable import portable_target
from tests.helpers.models import TINY_AXES, tiny_model

from .conftest import load_isolated, rel_diff, schemes

SCHEMES = schemes()
IDS = torch.tensor([[5, 17, 3, 44, 9, 81, 23, 60, 2, 11], [70, 1, 33, 8, 52, 19, 4, 90, 27, 6]])
NEW = 8


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each scheme's tiny model exported with format=auto, then loaded by plain transformers in a Python where
    cod_train cannot be imported: {scheme: (trained model, config.json, isolated result)}."""
    tmp = tmp_path_factory.mktemp("portable")
    torch.set_num_threads(1)  # module fixtures run before the per-test one-thread fixture
    models, jobs = {}, []
    for i, (name, overrides) in enumerate(SCHEMES.items()):
        model = tiny_model(random_norms=True, seed=i, **overrides)
        save_hf(model, tmp / name)
        models[name] = model
        jobs.append({"dir": str(tmp / name), "ids": IDS, "new": NEW})
    results = load_isolated(jobs, tmp)["jobs"]
    return {name: (models[name], json.loads((tmp / name / "config.json").read_text()), res)
            for name, res in zip(models, results, strict=True)}


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_export_loads_without_cod_train_with_same_logits_and_greedy(exported, scheme):
    model, config, res = exported[scheme]
    assert "error" not in res, res.get("error")
    with torch.no_grad():
        want = model(input_ids=IDS).logits
        greedy = model.generate(IDS, max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    assert rel_diff(res["logits"], want) <= 1e-5
    assert torch.equal(res["greedy"], greedy)
    target = portable_target(model.config)
    if target is not None:  # a class transformers ships, not remote code
        assert config["model_type"] == target.name and "auto_map" not in config
        assert res["module"].startswith("transformers.models.")
    else:
        assert config["model_type"] == "cod_llama" and "AutoModelForCausalLM" in config["auto_map"]
        assert res["module"].startswith("transformers_modules.")


def test_pre_ln_and_lns_export_as_plain_llama():
    """The two schemes the issue names: LlamaForCausalLM, and LNS's 1/sqrt(l) lands in the norm weights."""
    for nt in ("pre_ln", "lns"):
        target = portable_target(tiny_model(random_norms=True, norm_type=nt).config)
        assert target is not None and target.architecture == "LlamaForCausalLM"
    from cod_train.model.portable import TARGETS, fold_state

    lns = tiny_model(random_norms=True, norm_type="lns")
    folded = fold_state(lns, TARGETS["llama"])
    for i in range(TINY_AXES["num_hidden_layers"]):
        w = lns.state_dict()[f"model.layers.{i}.input_layernorm.weight"]
        torch.testing.assert_close(folded[f"model.layers.{i}.input_layernorm.weight"], w / (i + 1) ** 0.5)


def test_generated_code_imports_only_torch_and_transformers():
    source = generate_modeling_source()
    assert check_imports(source) == []
    imports = [line for line in source.splitlines() if line.lstrip().startswith(("import ", "from "))]
    assert imports and not any("cod_train" in line for line in imports)
    assert check_imports("import numpy\nfrom cod_train.model import x\n") == ["cod_train", "numpy"]


def _cli(monkeypatch, *args: str) -> int:
    from cod_train.cli import export

    monkeypatch.setattr(sys, "argv", ["cod-export", *args])
    try:
        export.main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, monkeypatch, capsys):
    src = tmp_path / "post_ln"
    save_hf(tiny_model(random_norms=True, norm_type="post_ln"), src, fmt="cod_llama")
    cases = [
        ((f"checkpoint={src}", f"out={tmp_path / 'a'}", "format=llama"), ["format=llama", "remote_code"]),
        ((f"checkpoint={src}", f"out={tmp_path / 'b'}", "format=gguf"), ["format=gguf", "remote_code"]),
        ((f"checkpoint={tmp_path / 'nope'}", f"out={tmp_path / 'c'}"), ["no such file"]),
        ((f"checkpoint={src}", f"out={tmp_path / 'd'}", "format=onnx"), ["format='onnx'", "llama"]),
    ]
    capsys.readouterr()
    for args, words in cases:
        assert _cli(monkeypatch, *args) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and all(w in lines[0] for w in words), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["post_ln"]


def test_training_runs_final_export_is_plain_llama(tmp_path):
    """The end-of-run export (train loop -> save_hf, format auto) of the default scheme and of LNS loads in
    plain transformers (no cod_train) and computes what the final checkpoint computes."""
    from cod_train.engine.checkpoint import latest_checkpoint
    from cod_train.engine.export import build_from_checkpoint
    from tests.helpers.engine_run import run

    trained, jobs = [], []
    for norm_type in ("pre_ln", "lns"):
        run_dir = tmp_path / norm_type
        run(f"run_dir={run_dir}", "train.max_steps=2", "train.export_hf=true", f"model.norm_type={norm_type}")
        config = json.loads((run_dir / "hf" / "config.json").read_text())
        assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
        assert config["norm_type"] == norm_type  # the trained scheme, for cod-eval / cod-analyze labels
        trained.append(build_from_checkpoint(latest_checkpoint(run_dir / "checkpoints")))
        jobs.append({"dir": str(run_dir / "hf"), "ids": IDS % trained[-1].config.vocab_size, "new": 4})
    for model, job, res in zip(trained, jobs, load_isolated(jobs, tmp_path)["jobs"], strict=True):
        assert "error" not in res, res.get("error")
        with torch.no_grad():
            assert rel_diff(res["logits"], model(input_ids=job["ids"]).logits) <= 1e-5


def test_bf16_export_is_folded_in_fp32_then_rounded(tmp_path):
    from safetensors.torch import load_file

    model = tiny_model(random_norms=True, norm_type="lns")
    want = model.model.layers[3].input_layernorm.weight.detach().clone() / 2  # 1/sqrt(4), folded in fp32
    save_hf(model.to(torch.bfloat16), tmp_path / "x")  # a bf16-pure run's weights: exported in bf16
    state = load_file(str(tmp_path / "x" / "model.safetensors"))
    assert {t.dtype for t in state.values()} == {torch.bfloat16}
    torch.testing.assert_close(state["model.layers.3.input_layernorm.weight"], want.to(torch.bfloat16), rtol=0, atol=0)
    assert json.loads((tmp_path / "x" / "config.json").read_text())["model_type"] == "llama"
