"""Hyper-connection models (residual=hc / mhc) export as self-contained remote code (the generator picks up
cod_train/model/hyper_connections.py) and compute, in a Python without cod_train, what the trained model does."""

from __future__ import annotations

import json

import torch

from cod_train.engine.export import save_hf
from cod_train.model.portable import portable_target
from tests.helpers.models import tiny_model

from .conftest import load_isolated, rel_diff

IDS = torch.tensor([[5, 17, 3, 44, 9, 81, 23, 60, 2, 11], [70, 1, 33, 8, 52, 19, 4, 90, 27, 6]])
SCHEMES = {"hc_dynamic": dict(residual="hc", hc_dynamic=True),
           "lns_mhc_head": dict(norm_type="lns", residual="mhc", hc_streams=2)}


def test_hyper_connection_exports_load_without_cod_train(tmp_path):
    torch.set_num_threads(1)
    models, jobs = {}, []
    for i, (name, overrides) in enumerate(SCHEMES.items()):
        models[name] = tiny_model(random_norms=True, seed=i, **overrides)
        with torch.no_grad():  # connection weights off their init (one-hots, zeros)
            for pname, p in models[name].named_parameters():
                if "_hc." in pname and p.dim() == 2:
                    p.add_(0.05 * torch.randn_like(p))
        assert portable_target(models[name].config) is None
        save_hf(models[name], tmp_path / name)
        jobs.append({"dir": str(tmp_path / name), "ids": IDS, "new": 8})
    results = load_isolated(jobs, tmp_path)["jobs"]
    for (name, model), res in zip(models.items(), results, strict=True):
        assert "error" not in res, (name, res.get("error"))
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert config["model_type"] == "cod_llama" and res["module"].startswith("transformers_modules.")
        assert config["residual"] == SCHEMES[name]["residual"]
        with torch.no_grad():
            want = model(input_ids=IDS).logits
            greedy = model.generate(IDS, max_new_tokens=8, do_sample=False, pad_token_id=0)
        assert rel_diff(res["logits"], want) <= 1e-5, name
        assert torch.equal(res["greedy"], greedy), name
