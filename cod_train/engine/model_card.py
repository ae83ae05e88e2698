"""The ``README.md`` model card of an export: Hub metadata, architecture, training data, config, evals, usage.

Everything comes from the model's config and, when the export belongs to a run, from the run directory
(``config.yaml``, ``metrics.jsonl``, ``eval.json``); a missing piece is left out, never guessed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

USAGE = {
    "remote_code": "AutoModelForCausalLM.from_pretrained({repo!r}, trust_remote_code=True)",
    "cod_llama": "AutoModelForCausalLM.from_pretrained({repo!r})  # after `import cod_train`",
}


def run_dir_of(out: Path) -> Path | None:
    """The run an export lives in (``run_dir/hf``), if any."""
    return out.parent if out.name == "hf" and (out.parent / "config.yaml").is_file() else None


def placement_equation(norm_type: str) -> str | None:
    """The line of ``cod_train.model.modeling``'s docstring that defines ``norm_type`` (its one home)."""
    from cod_train.model import modeling

    for line in (modeling.__doc__ or "").splitlines():
        if re.match(rf"\s+{re.escape(norm_type)}\s", line):
            return line.strip()
    return None


def _last_tokens(run_dir: Path) -> int | None:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    tokens = None
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        tokens = row.get("tokens", tokens)
    return tokens


def _front_matter(norm: str, fmt: str, run_cfg: dict[str, Any]) -> str:
    from huggingface_hub import ModelCardData

    data = run_cfg.get("data") or {}
    meta = ModelCardData(
        library_name="transformers", pipeline_tag="text-generation",
        tags=["cod-train", norm.replace("_", "-"), *(["custom_code"] if fmt == "remote_code" else []),
              *(["gguf"] if fmt == "gguf" else [])],
        datasets=[data.get("hub_dataset", "allenai/c4")] if data.get("source") == "c4" else None,
    )
    return f"---\n{meta.to_yaml()}\n---\n"


def _architecture(config: Any, norm: str) -> list[str]:
    eq = placement_equation(norm)
    keys = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
            "vocab_size", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings")
    rows = [f"| {k} | {getattr(config, k, None)} |" for k in keys]
    out = ["## Architecture", "", f"A LLaMA-style decoder trained with cod-train, normalization `{norm}`."]
    if eq:
        out += ["", "With x the residual stream entering layer l, N1/N2 its two norms:", "", f"    {eq}"]
    return [*out, "", "| size | value |", "|---|---|", *rows, ""]


def _training(run_dir: Path | None, run_cfg: dict[str, Any]) -> list[str]:
    if run_dir is None:
        return []
    data, train = run_cfg.get("data") or {}, run_cfg.get("train") or {}
    tokens = _last_tokens(run_dir)
    out = ["## Training", ""]
    if data:
        where = {"c4": data.get("hub_dataset", "allenai/c4"), "sample": "cod-train's bundled text sample"}
        out.append(f"- data: `{data.get('source')}` ({where.get(str(data.get('source')), data.get('paths'))}), "
                   f"tokenizer `{data.get('tokenizer')}`, sequence length {data.get('seq_len')}")
    if tokens is not None:
        out.append(f"- tokens seen: {tokens:,}")
    if train:
        out.append(f"- steps: {train.get('max_steps')}, global batch {train.get('global_batch_size')} sequences, "
                   f"lr {train.get('lr')}, precision {train.get('precision')}")
    config_text = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    if config_text:
        out += ["", "<details><summary>The run's config (config.yaml)</summary>", "", "```yaml",
                config_text.rstrip(), "```", "</details>"]
    return [*out, ""]


def _evals(run_dir: Path | None) -> list[str]:
    path = run_dir / "eval.json" if run_dir else None
    if path is None or not path.is_file():
        return []
    result = json.loads(path.read_text())
    rows = [f"| perplexity | {k} | {v} |" for k, v in (result.get("perplexity") or {}).items()]
    for task, scores in (result.get("downstream") or {}).items():
        if isinstance(scores, dict):
            rows += [f"| {task} | {k} | {v} |" for k, v in scores.items() if isinstance(v, (int, float))]
        elif isinstance(scores, (int, float)):
            rows.append(f"| {task} | | {scores} |")
    return ["## Evaluation (cod-eval, eval.json)", "", "| task | metric | value |", "|---|---|---|", *rows, ""]


def _usage(fmt: str, repo: str, gguf_files: list[str]) -> list[str]:
    load = USAGE.get(fmt, "AutoModelForCausalLM.from_pretrained({repo!r})").format(repo=repo)
    out = ["## Usage", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
           f"model = {load}", f"tokenizer = AutoTokenizer.from_pretrained({repo!r})",
           'ids = tokenizer("The capital of France is", return_tensors="pt").input_ids',
           "print(tokenizer.decode(model.generate(ids, max_new_tokens=20, do_sample=False)[0]))", "```"]
    for name in gguf_files:
        out += ["", f"llama.cpp: `llama-cli -m {name} -p \"The capital of France is\"`; transformers: "
                f"`AutoModelForCausalLM.from_pretrained({repo!r}, gguf_file={name!r})`"]
    return [*out, ""]


def write_card(out: Path, config: Any, fmt: str, options: Any, final_dir: Path, architecture: str) -> Path:
    """Write ``out/README.md`` for the export that will live at ``final_dir``. ``config`` is the trained model's,
    ``architecture`` the exported class, ``options`` an ``ExportOptions`` (run_dir, repo_id)."""
    run_dir = options.run_dir or run_dir_of(final_dir)
    cfg_path = run_dir / "config.yaml" if run_dir else None
    run_cfg: dict[str, Any] = {}
    if cfg_path is not None and cfg_path.is_file():
        run_cfg = OmegaConf.to_container(OmegaConf.load(cfg_path)) or {}  # type: ignore[assignment]
    norm = str(getattr(config, "norm_type", None) or (run_cfg.get("model") or {}).get("norm_type") or "pre_ln")
    title = options.repo_id or (run_dir.name if run_dir else final_dir.name)
    repo = options.repo_id or str(final_dir)
    how = {"remote_code": "the generated `modeling_cod_llama.py` (imports only torch and transformers)",
           "cod_llama": "cod-train's own classes"}.get(fmt, "a class transformers ships" + (
               "" if norm == "pre_ln" else f"; {norm}'s extra factors are folded into the weights exactly"))
    lines = [_front_matter(norm, fmt, run_cfg), f"# {title}", "",
             f"Exported by cod-train as `{fmt}`: `{architecture}`, {how}.", "",
             *_architecture(config, norm), *_training(run_dir, run_cfg), *_evals(run_dir),
             *_usage(fmt, repo, sorted(p.name for p in out.glob("*.gguf")))]
    path = out / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
