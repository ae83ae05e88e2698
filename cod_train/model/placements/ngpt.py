"""nGPT, the normalized Transformer (Loshchilov et al. 2024, arXiv 2410.01131): the hidden state h and every weight
vector along the embedding dimension live on the unit sphere, and each sub-layer moves h towards its own
(normalized) output by a learned per-channel step, its eigen learning rate:

    h <- Norm(h + |alpha_A| (Norm(Attn(h)) - h)),   h <- Norm(h + |alpha_M| (Norm(MLP(h)) - h))

Norm(x) = x / ||x||. Attention: q <- Norm(q) s_qk, k <- Norm(k) s_qk per head after RoPE, softmax scale
sqrt(head_dim) (the unit q, k make 1/sqrt(head_dim) far too cold). MLP: u <- u s_u, v <- v s_v sqrt(d)
(v: the gate, SiLU's input). Logits: z = s_z (h E^T). No norm layer anywhere (no final norm): the stream is unit.
Every learned vector s = p (init / scaling) with p starting at `scaling` (`cod_train.model.ngpt.NgptScale`):
alpha_A, alpha_M (init 0.05, scaling 1/sqrt(d)), s_qk (1, 1/sqrt(d)), s_u, s_v (1, 1), s_z (1, 1/sqrt(d)).
The embedding rows, lm_head's rows, the rows of q/k/v/gate/up (along their input d) and the columns of o_proj /
down_proj (along their output d) are unit at init and after every optimizer step (a training-loop callback).
Trained with no weight decay and no learning-rate warm-up, as in the paper (other values are refused).
"""

from __future__ import annotations

import math
from typing import Any

from cod_train.model.zoo import Placement, axis, register_placement

# the axes that mean nothing under nGPT, with the value they must keep (a set one would be silently ignored)
NGPT_FIXED = {"residual": "plain", "norm_fn": "rmsnorm", "norm_bias": False, "embed_norm": False,
              "embed_scale": False, "scaled_init": False}


@register_placement
class NGPT(Placement):
    name = "ngpt"
    summary = "nGPT: hidden states and weight vectors on the unit sphere, learned eigen learning rates, no norms"
    equations = "h = Norm(x + a_A (Norm(Attn(x)) - x)),  y = Norm(h + a_M (Norm(MLP(h)) - h))"
    paper = "Loshchilov et al. 2024, arXiv 2410.01131"
    norms = ()
    mid_stream = "mlp"  # the MLP reads the stream h itself
    final_norm = False
    tags = ("ngpt",)

    def problems(self, axes: Any) -> list[str]:
        wrong = [f"{key}={axis(axes, key)}" for key, want in NGPT_FIXED.items()
                 if axis(axes, key) is not None and axis(axes, key) != want]
        qk = axis(axes, "qk_norm")
        wrong += [f"qk_norm={qk}"] if qk not in (None, "none") else []
        heads, kv_heads = axis(axes, "num_attention_heads"), axis(axes, "num_key_value_heads")
        wrong += [f"num_key_value_heads={kv_heads}"] if kv_heads not in (None, heads) else []
        if not wrong:
            return []
        return [f"norm_type=ngpt does not combine with {', '.join(wrong)}: nGPT has no norm layers (its q/k are "
                f"unit by construction), its own residual update and one s_qk shared by q and k; it combines with "
                f"residual=plain, norm_fn=rmsnorm, qk_norm=none and num_key_value_heads=num_attention_heads"]

    def run_problems(self, run: Any) -> list[str]:
        problems = []
        if run.train.weight_decay != 0:
            problems.append(f"norm_type=ngpt trains without weight decay (its weights are renormalized after every "
                            f"step; the paper): set train.weight_decay=0 (got {run.train.weight_decay})")
        if run.train.warmup_steps != 0:
            problems.append(f"norm_type=ngpt trains without learning-rate warm-up (the paper): set "
                            f"train.warmup_steps=0 (got {run.train.warmup_steps})")
        if run.distributed.engine == "deepspeed":
            problems.append("norm_type=ngpt renormalizes its weights after each optimizer step, which DeepSpeed's "
                            "own fp32 master copies would undo: use distributed.engine=single, ddp or fsdp")
        return problems

    def build_layer(self, block: Any, config: Any) -> None:
        from cod_train.model.ngpt import NgptEigenLR, NgptGateUpScale, NgptQKScale

        attn, mlp, d = block.self_attn, block.mlp, config.hidden_size
        attn.softmax_scale = math.sqrt(attn.head_dim)
        attn.qk_scale = NgptQKScale(attn.n_heads, attn.head_dim, d)
        mlp.gate_up_scale = NgptGateUpScale(config.intermediate_size, d)
        block.ngpt = NgptEigenLR(d)
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            proj.unit_dim = 1  # [out, d]: each row, along the input d
        for proj in (attn.o_proj, mlp.down_proj):
            proj.unit_dim = 0  # [d, in]: each column, along the output d

    def build_model(self, model: Any, config: Any) -> None:
        model.embed_tokens.unit_dim = 1

    def build_head(self, config: Any) -> Any:
        from cod_train.model.ngpt import NgptHead

        return NgptHead(config.hidden_size, config.vocab_size, config.initializer_range)

    def callbacks(self, config: Any) -> list[Any]:
        from cod_train.model.ngpt import NgptRenormalize

        return [NgptRenormalize()]

    def forward(self, b: Any, x: Any, attn: Any) -> Any:
        h = b.ngpt.step(x, attn(x), "attn")
        return b.ngpt.step(h, b.mlp(h), "mlp")

    def card_phrase(self, axes: Any) -> str:
        return "normalized Transformer `ngpt` (nGPT: every hidden state and weight vector on the unit sphere)"
