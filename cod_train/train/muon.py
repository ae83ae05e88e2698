"""``train.optimizer=muon``: torch's Muon (Newton-Schulz orthogonalized momentum, arXiv 2502.16982) on the
decoder blocks' hidden matrices, torch's AdamW on every other parameter, as ONE ``torch.optim.Optimizer``: one
``param_groups`` list (``engine.set_lr`` and CompleteP's ``lr_scale`` act on both halves), one ``state`` and
``state_dict`` (torch checkpoints, FSDP2's DCP and exact resume see an ordinary optimizer).

Under FSDP2 a hidden matrix is a DTensor sharded on its rows: its momentum is updated shard by shard
(element-wise), then each rank gathers the whole momentum-corrected gradient, orthogonalizes it, and keeps its
own rows of the result (docs/architecture.md, "Muon under FSDP2").
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz

MUON_FLAG = "muon"  # the param-group key that sends a group to Muon


def _is_sharded(tensor: torch.Tensor) -> bool:
    return hasattr(tensor, "full_tensor")  # a DTensor (FSDP2)


class GatheringMuon(torch.optim.Muon):
    """torch's Muon; FSDP2-sharded matrices are orthogonalized whole (gathered) and each rank keeps its shard."""

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        if not any(_is_sharded(p) for group in self.param_groups for p in group["params"]):
            return super().step(closure)
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._sharded_update(param, group)
        return None

    def _sharded_update(self, param: torch.Tensor, group: dict[str, Any]) -> None:
        """torch's ``_single_tensor_muon`` for one DTensor parameter, with the Newton-Schulz step on the full
        matrix (every rank computes it; each keeps its own shard: no second collective)."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        grad = param.grad
        assert grad is not None
        state = self.state[param]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(grad)
        buf = state["momentum_buffer"]
        buf.lerp_(grad, 1 - group["momentum"])
        update = cast(DTensor, grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf)
        full = _zeropower_via_newtonschulz(update.full_tensor(), group["ns_coefficients"], group["ns_steps"],
                                           group["eps"])
        local = distribute_tensor(full, update.device_mesh, update.placements, src_data_rank=None)
        param.mul_(1 - group["lr"] * group["weight_decay"])
        param.add_(local, alpha=-_adjust_lr(group["lr"], group["adjust_lr_fn"], param.shape))


class MuonWithAdamW(torch.optim.Optimizer):
    """Groups tagged ``muon`` step with :class:`GatheringMuon`, the rest with ``torch.optim.AdamW``; both inner
    optimizers read this optimizer's groups and state (re-linked on each step, since ``load_state_dict``
    replaces both)."""

    def __init__(self, groups: list[dict[str, Any]], *, muon: dict[str, Any], adamw: dict[str, Any]):
        muon_groups = [g for g in groups if g.get(MUON_FLAG)]
        adamw_groups = [g for g in groups if not g.get(MUON_FLAG)]
        self.muon = GatheringMuon(muon_groups, **muon) if muon_groups else None
        self.adamw = torch.optim.AdamW(adamw_groups, **adamw) if adamw_groups else None
        super().__init__(groups, defaults={})  # the same group dicts, each filled with its optimizer's defaults

    def _link(self) -> None:
        for inner, is_muon in ((self.muon, True), (self.adamw, False)):
            if inner is not None:
                inner.param_groups = [g for g in self.param_groups if bool(g.get(MUON_FLAG)) is is_muon]
                inner.state = self.state

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._link()
        for inner in (self.muon, self.adamw):
            if inner is not None:
                inner.step()
        return loss
