"""The ``README.md`` model card of an export: Hub metadata, the scheme, training data, config, evals, usage.

Everything comes from the model's config and, when the export belongs to a run, from the run directory
(``config.yaml``, ``eval.json``) and the checkpoint it was made from (its step and tokens: ``ExportOptions``,
or for the end-of-run export ``run_dir/hf``, the run's last checkpoint, saved at the same step just before);
a missing piece is left out, never guessed. The usage snippet runs as written (``tests/export``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cod_train.model import zoo

# how the exported model class is found, per format: the snippet's imports and keyword arguments
LOADERS = {
    "remote_code": ("", ", trust_remote_code=True"),
    "cod_llama": ("import cod_train  # registers model_type cod_llama with transformers\n", ""),
}
# config keys that say how the loss or kernels are computed, not what the model is
NOT_SCHEME = frozenset({"fused_loss", "loss_chunk_size", "use_kernels"})


def run_dir_of(out: Path) -> Path | None:
    """The run an export lives in (``run_dir/hf``), if any."""
    return out.parent if out.name == "hf" and (out.parent / "config.yaml").is_file() else None


def scheme_axes(config: Any, norm: str) -> dict[str, Any]:
    """Every axis of the scheme that is off its default, resolved where the placement picks it, with the
    numbers its equations use (the streams of hc / mhc, alpha of depth_scaled, the Post-LN share of mix_ln)."""
    from cod_train.model.configuration import CodLlamaConfig
    from cod_train.model.portable import cod_only_keys

    values, defaults = config.to_dict(), CodLlamaConfig().to_dict()
    axes: dict[str, Any] = {"norm_type": norm}
    axes.update({k: values[k] for k in sorted(cod_only_keys() - NOT_SCHEME - {"norm_type"})
                 if k in values and values[k] != defaults.get(k)})
    if not isinstance(config, CodLlamaConfig):
        return axes
    for key, value in (("qk_norm", config.resolved_qk_norm), ("embed_norm", config.has_embed_norm),
                       ("embed_scale", config.has_embed_scale)):
        if value not in ("none", False):
            axes[key] = value
    for scheme in (config.placement_scheme, config.residual_scheme):
        axes.update(scheme.card_axes(config))
    return axes


def scheme_label(axes: dict[str, Any]) -> str:
    """The scheme in one word, as its run directory is named (``cod_train.model.zoo.scheme_name``)."""
    return zoo.scheme_name(axes)


def _schemes(axes: dict[str, Any]) -> tuple[Any, Any]:
    return zoo.placement(axes["norm_type"]), zoo.residual(str(axes.get("residual", "plain")))


def _front_matter(axes: dict[str, Any], fmt: str, run_cfg: dict[str, Any]) -> str:
    from huggingface_hub import ModelCardData

    data = run_cfg.get("data") or {}
    scheme_tags = [axes["norm_type"], axes.get("residual"), axes.get("norm_fn"),
                   f"qk-norm-{axes['qk_norm']}" if "qk_norm" in axes else None]
    scheme_tags += [tag for scheme in _schemes(axes) for tag in scheme.tags]
    meta = ModelCardData(
        library_name="transformers", pipeline_tag="text-generation",
        tags=["cod-train", *(t.replace("_", "-") for t in scheme_tags if t),
              *(["custom_code"] if fmt == "remote_code" else []), *(["gguf"] if fmt == "gguf" else [])],
        datasets=[data.get("hub_dataset", "allenai/c4")] if data.get("source") == "c4" else None,
    )
    return f"---\n{meta.to_yaml()}\n---\n"


def _scheme_sentence(axes: dict[str, Any]) -> str:
    placement, residual = _schemes(axes)
    out = f"scheme `{scheme_label(axes)}`: {placement.card_phrase(axes)}"
    if residual.name != "plain":
        out += f", {residual.card_phrase(axes)}"
    if "norm_fn" in axes:
        out += f", norm function `{axes['norm_fn']}` in place of RMSNorm"
    if "qk_norm" in axes:
        out += f", QK-norm `{axes['qk_norm']}`"
    if axes.get("value_residual"):
        out += ", value residuals (ResFormer: every later layer's attention values mixed with the first layer's)"
    return out + "."


def _architecture(config: Any, axes: dict[str, Any]) -> list[str]:
    equations = [f"{scheme.name}: {scheme.equations}" for scheme in _schemes(axes)]
    keys = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
            "vocab_size", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings")
    rows = [f"| {k} | {getattr(config, k, None)} |" for k in keys]
    out = ["## Architecture", "", f"A LLaMA-style decoder trained with cod-train, {_scheme_sentence(axes)}"]
    if equations:
        out += ["", "With x the residual stream entering layer l, N1/N2 its two norms, `x (+) f` the residual join "
                "of the branch output f (equations: cod_train/model/placements, cod_train/model/residuals):", "",
                *(f"    {line}" for line in equations)]
    out += ["", "| scheme axis | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in axes.items())]
    return [*out, "", "| size | value |", "|---|---|", *rows, ""]


def _checkpoint_facts(options: Any, run_dir: Path | None, final_dir: Path) -> tuple[int | None, int | None]:
    """(step, tokens) of the checkpoint exported: given, or, for the end-of-run export, the run's last
    checkpoint's (the run saves it at the step it stops at, right before it exports)."""
    if options.step is not None or run_dir is None or run_dir_of(final_dir) != run_dir:
        return options.step, options.tokens
    from cod_train.engine.checkpoint import latest_checkpoint, read_meta

    last = latest_checkpoint(run_dir / "checkpoints")
    if last is None:
        return None, None
    meta = read_meta(last)
    return meta.get("step"), meta.get("tokens")


def _training(run_dir: Path | None, run_cfg: dict[str, Any], step: int | None, tokens: int | None) -> list[str]:
    if run_dir is None and step is None:
        return []
    data, train = run_cfg.get("data") or {}, run_cfg.get("train") or {}
    out = ["## Training", ""]
    if data:
        where = {"c4": data.get("hub_dataset", "allenai/c4"), "sample": "cod-train's bundled text sample"}
        out.append(f"- data: `{data.get('source')}` ({where.get(str(data.get('source')), data.get('paths'))}), "
                   f"tokenizer `{data.get('tokenizer')}`, sequence length {data.get('seq_len')}")
    if step is not None:
        planned = f" of the {train['max_steps']} configured (train.max_steps)" if train.get("max_steps") else ""
        out.append(f"- this checkpoint: step {step}{planned}"
                   + (f", {tokens:,} tokens seen" if tokens is not None else ""))
    if train:
        out.append(f"- global batch {train.get('global_batch_size')} sequences, lr {train.get('lr')}, "
                   f"precision {train.get('precision')}")
    config_text = (run_dir / "config.yaml").read_text() if run_dir and (run_dir / "config.yaml").is_file() else ""
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
    which = f" of `{result['checkpoint']}`" if result.get("checkpoint") else ""
    return [f"## Evaluation (cod-eval{which}, eval.json)", "", "| task | metric | value |", "|---|---|---|",
            *rows, ""]


def usage_snippet(fmt: str, repo: str) -> str:
    """Python that loads the export from ``repo`` (a Hub id or a directory) and greedily continues a prompt."""
    imports, kwargs = LOADERS.get(fmt, ("", ""))
    return (f"{imports}from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"model = AutoModelForCausalLM.from_pretrained({repo!r}{kwargs})\n"
            f"tokenizer = AutoTokenizer.from_pretrained({repo!r}{kwargs})\n"
            'ids = tokenizer("The capital of France is", return_tensors="pt").input_ids\n'
            "print(tokenizer.decode(model.generate(ids, max_new_tokens=20, do_sample=False)[0]))\n")


def _usage(fmt: str, repo: str, gguf_files: list[str]) -> list[str]:
    out = ["## Usage", "", "```python", *usage_snippet(fmt, repo).splitlines(), "```"]
    for name in gguf_files:
        out += ["", f"llama.cpp: `llama-cli -m {name} -p \"The capital of France is\"`; transformers: "
                f"`AutoModelForCausalLM.from_pretrained({repo!r}, gguf_file={name!r})`"]
    return [*out, ""]


def write_card(out: Path, config: Any, fmt: str, options: Any, final_dir: Path, architecture: str) -> Path:
    """Write ``out/README.md`` for the export that will live at ``final_dir``. ``config`` is the trained model's,
    ``architecture`` the exported class, ``options`` an ``ExportOptions`` (run_dir, repo_id, step, tokens)."""
    run_dir = options.run_dir or run_dir_of(final_dir)
    cfg_path = run_dir / "config.yaml" if run_dir else None
    run_cfg: dict[str, Any] = {}
    if cfg_path is not None and cfg_path.is_file():
        run_cfg = OmegaConf.to_container(OmegaConf.load(cfg_path)) or {}  # type: ignore[assignment]
    norm = str(getattr(config, "norm_type", None) or (run_cfg.get("model") or {}).get("norm_type") or "pre_ln")
    axes = scheme_axes(config, norm)
    title = options.repo_id or (run_dir.name if run_dir else final_dir.name)
    repo = options.repo_id or str(final_dir)
    label = scheme_label(axes)
    folded = "" if label == "pre_ln" else f"; `{label}` maps onto it exactly (its extra factors folded into the weights)"
    how = {"remote_code": "the generated `modeling_cod_llama.py` (imports only torch and transformers)",
           "cod_llama": "cod-train's own classes"}.get(fmt, "a class transformers ships" + folded)
    step, tokens = _checkpoint_facts(options, run_dir, final_dir)
    lines = [_front_matter(axes, fmt, run_cfg), f"# {title}", "",
             f"Exported by cod-train as `{fmt}`: `{architecture}`, {how}.", "",
             *_architecture(config, axes), *_training(run_dir, run_cfg, step, tokens), *_evals(run_dir),
             *_usage(fmt, repo, sorted(p.name for p in out.glob("*.gguf")))]
    path = out / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
