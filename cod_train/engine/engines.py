"""The engines behind one interface: ``single``, ``ddp``, ``fsdp`` (FSDP2 ``fully_shard``), ``deepspeed`` (ZeRO 1-3).

Per optimizer step the loop does::

    for i, micro in enumerate(micro_batches):
        with engine.accumulate(last=i == n - 1), engine.autocast():
            loss = engine.model(**micro).loss
        engine.backward(loss)
    norm = engine.clip_grad_norm()                # a device tensor; None where the engine clips in its step
    norm = engine.optimizer_step(lr, skip) or norm  # skip: 0-d bool device tensor (non-finite loss or norm)

Checkpoint formats (``engine.format``): ``torch`` (single/DDP: ``model.safetensors`` + ``optimizer.pt``),
``dcp`` (FSDP2: ``dcp/``, torch.distributed.checkpoint, reshardable), ``deepspeed`` (``deepspeed/``,
DeepSpeed native, plus a consolidated ``model.safetensors`` for export).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from safetensors.torch import load_model
from torch import nn

from cod_train.config import DistributedConfig
from cod_train.core.errors import ConfigError, RunError
from cod_train.core.io import WrittenFiles
from cod_train.engine.distributed import DistEnv, barrier
from cod_train.engine.layers import decoder_layers, materialize

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy
    from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)
OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]
MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.pt"


def _param_dtype(precision: str, override: str = "auto") -> torch.dtype | None:
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}
    if override != "auto":
        if override not in names:
            raise ConfigError(f"distributed.fsdp_param_dtype must be auto, bf16 or fp32, got {override!r}")
        return names[override]
    return torch.bfloat16 if precision == "bf16-mixed" else None


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)  # lr_scale: CompleteP's per-depth rule (train/optim.py)


def move_to(module: nn.Module, where: torch.device | torch.dtype) -> None:
    """``module.to(where)`` unless every parameter and buffer is there already: cod-plan's fake tensors
    (engine/plan.py) cannot be moved, even onto their own device (torch swaps fake parameters)."""
    tensors = [*module.parameters(), *module.buffers()]
    if isinstance(where, torch.dtype):
        done = all(t.dtype == where for t in tensors if t.is_floating_point())
    else:
        done = all(t.device == where or (t.device.type == where.type and where.index is None) for t in tensors)
    if not done:
        module.to(where)


def cpu_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


class Engine:
    """A model wrapped for training plus its optimizer; subclasses fill in the engine-specific parts."""

    name = "base"
    format = "torch"

    def __init__(self, model: nn.Module, dist_cfg: DistributedConfig, env: DistEnv, *,
                 optimizer_fn: OptimizerFactory, precision: str, micro_batch_size: int,
                 grad_accum_steps: int, grad_clip: float, resume_world_size: int | None = None):
        self.module = model  # the plain model (what diagnostics and exports see)
        self.env = env
        self.dist_cfg = dist_cfg
        self.precision = precision
        self.grad_clip = grad_clip
        self.micro_batch_size = micro_batch_size
        self.grad_accum_steps = grad_accum_steps
        # resuming from a checkpoint written by another number of processes (DeepSpeed: a universal checkpoint)
        self.resume_reshards = resume_world_size is not None and resume_world_size != env.world_size
        self.model: nn.Module = model  # what the loop calls
        self.optimizer: torch.optim.Optimizer
        self.setup(optimizer_fn)

    # --- set-up -----------------------------------------------------------------------------------
    def setup(self, optimizer_fn: OptimizerFactory) -> None:
        move_to(self.module, self.env.device)
        if self.precision == "bf16-pure":
            move_to(self.module, torch.bfloat16)
        self.model = self.wrap(self.module)
        self.optimizer = optimizer_fn(self.module)

    def wrap(self, module: nn.Module) -> nn.Module:
        return module

    # --- one optimizer step -----------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16-mixed on every engine: bf16 matmuls through torch.autocast, an fp32 residual stream (docs/design.md)."""
        if self.precision == "bf16-mixed":
            return torch.autocast(self.env.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def accumulate(self, last: bool) -> contextlib.AbstractContextManager:
        """Context for one micro-batch's forward+backward; ``last`` = the one that completes the step."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def grads(self) -> list[torch.Tensor]:
        return [p.grad for p in self.module.parameters() if p.grad is not None]

    def clip_grad_norm(self) -> torch.Tensor | None:
        """Global gradient norm before clipping, as a device tensor (no host sync); clips to ``grad_clip``."""
        grads = self.grads()
        if not grads:
            return torch.zeros((), device=self.env.device)
        norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=True)
        if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
            norm = norm.full_tensor()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(
                [p for p in self.module.parameters() if p.grad is not None], self.grad_clip, norm, foreach=True)
        return norm

    def optimizer_step(self, lr: float, skip: torch.Tensor) -> torch.Tensor | None:
        """Apply the step unless ``skip`` (a 0-d bool device tensor) is true; returns the engine's own grad norm
        where it computes one (DeepSpeed: NaN when it dropped the step itself), else None.

        A fused Adam skips on the device (``found_inf``, the protocol GradScaler uses: parameters, moments and
        the step count stay as they were), so no step waits for the host; other optimizers read ``skip`` on
        the host."""
        set_lr(self.optimizer, lr)
        if all(group.get("fused") for group in self.optimizer.param_groups):
            self.optimizer.found_inf = skip.float()  # type: ignore[attr-defined]
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf  # type: ignore[attr-defined]
        elif not bool(skip):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return None

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def reshard(self) -> None:
        """Drop gathered parameters after a forward that no backward follows (diagnostics between backward and
        the optimizer step). A no-op but for FSDP2."""

    # --- state ------------------------------------------------------------------------------------
    def save(self, path: Path, written: WrittenFiles) -> None:
        """Write model + optimizer state under ``path``, each file through ``written`` (collective: every rank
        calls it). A failed write is raised (an OSError) only after this rank's last collective in here."""
        if self.env.is_main:
            written.save_safetensors(self.module, path / MODEL_FILE)
            written.save_torch(self.optimizer.state_dict(), path / OPTIM_FILE)

    def load(self, path: Path, meta: dict[str, Any]) -> None:
        _expect_format(path, meta, self.format)
        missing, unexpected = load_model(self.module, str(path / MODEL_FILE), strict=False,
                                         device=str(self.env.device))
        if missing or unexpected:  # found while resuming, after set-up: a damaged or foreign checkpoint
            raise RunError(f"checkpoint {path} does not match the model: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}; resume with the model settings it was "
                           "trained with, or start a new run_dir")
        # On the CPU first: load_state_dict moves each state to its parameter's device, but keeps Adam's `step`
        # where it was loaded, and a `step` on the GPU makes foreach Adam call .item() per parameter every step.
        state = torch.load(path / OPTIM_FILE, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state)

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model's weights on CPU on rank 0 (``None`` elsewhere); collective."""
        return cpu_state_dict(self.module) if self.env.is_main else None


def _expect_format(path: Path, meta: dict[str, Any], fmt: str) -> None:
    # A ConfigError although it is found while resuming: the cause is always the chosen distributed.engine,
    # and it is raised before the first step, with the setting to change.
    saved = meta.get("format")
    if saved != fmt:
        raise ConfigError(f"checkpoint {path} was written in the {saved!r} format (engine {meta.get('engine')!r}); "
                          f"this engine reads {fmt!r}. Resume with the same engine family, or export it with "
                          "cod-export and start a new run from the HF directory")


class SingleEngine(Engine):
    name = "single"


class DDPEngine(Engine):
    name = "ddp"

    def wrap(self, module: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.env.device.index] if self.env.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def accumulate(self, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if last else cast("DistributedDataParallel", self.model).no_sync()


def fsdp_mesh_shape(world_size: int, hsdp_replicas: int) -> tuple[int, ...]:
    """The FSDP2 device-mesh shape: ``(world,)`` for plain FSDP, ``(replicas, world/replicas)`` for HSDP."""
    if hsdp_replicas < 1 or world_size % hsdp_replicas:
        raise ConfigError(f"distributed.hsdp_replicas={hsdp_replicas} must be >= 1 and divide the world size "
                          f"{world_size} (HSDP shards within world/replicas ranks, replicates across replicas)")
    return (world_size,) if hsdp_replicas == 1 else (hsdp_replicas, world_size // hsdp_replicas)


def fsdp_policies(precision: str, fsdp_param_dtype: str = "auto") -> tuple[MixedPrecisionPolicy, MixedPrecisionPolicy]:
    """FSDP2's mixed-precision policies of the decoder blocks and of the root.

    bf16-mixed, the numerics of every engine: the blocks all-gather bf16 copies of their weights, take their fp32
    input as it is (no ``cast_forward_inputs``) and return fp32 (``output_dtype``), so the residual stream stays
    fp32 as under autocast on the single and DDP engines, and the loop's autocast runs the matmuls in bf16; the
    root (embedding, final norm, lm_head: about 4% of a 7B model's weights) is gathered in fp32, so the stream
    starts in fp32. Gradients are reduced (and accumulated between reductions) in fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy

    param_dtype = _param_dtype(precision, fsdp_param_dtype)
    if precision == "bf16-mixed":
        blocks = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32,
                                      output_dtype=torch.float32, cast_forward_inputs=False)
        return blocks, MixedPrecisionPolicy(reduce_dtype=torch.float32)
    policy = MixedPrecisionPolicy(param_dtype=param_dtype,
                                  reduce_dtype=torch.float32 if param_dtype is not None else None)
    return policy, policy


class FSDPEngine(Engine):
    """FSDP2: each decoder block and then the root are ``fully_shard``-ed over the data-parallel mesh.

    The mesh is 1-D (plain FSDP), or 2-D ``(replicate, shard)`` with ``distributed.hsdp_replicas`` > 1 (HSDP:
    reduce-scatter within a group of consecutive ranks, all-reduce of the shard across groups). With
    ``distributed.fsdp_skip_grad_sync`` (default) the micro-batches before the last one of a step skip the
    gradient reduction: gradients accumulate unsharded on each rank and are reduced once per optimizer step.
    """

    name = "fsdp"
    format = "dcp"

    def _mesh(self, shape: tuple[int, ...]) -> DeviceMesh:
        from torch._subclasses.fake_tensor import unset_fake_temporarily
        from torch.distributed.device_mesh import init_device_mesh

        names = ("replicate", "shard") if len(shape) == 2 else None
        with unset_fake_temporarily():  # cod-plan sets up under FakeTensorMode; the mesh's rank table is real
            return init_device_mesh(self.env.device.type, shape, mesh_dim_names=names)

    def setup(self, optimizer_fn: OptimizerFactory) -> None:
        from torch.distributed.fsdp import fully_shard

        mesh_shape = fsdp_mesh_shape(self.env.world_size, self.dist_cfg.hsdp_replicas)  # checked first
        if self.precision == "bf16-pure":
            move_to(self.module, torch.bfloat16)
        on_meta = any(p.is_meta for p in self.module.parameters())
        if not on_meta:
            move_to(self.module, self.env.device)
        mesh = self._mesh(mesh_shape)
        block_policy, root_policy = fsdp_policies(self.precision, self.dist_cfg.fsdp_param_dtype)
        reshard = self.dist_cfg.reshard_after_forward
        for layer in decoder_layers(self.module):
            fully_shard(layer, mesh=mesh, mp_policy=block_policy, reshard_after_forward=reshard)
        # The root's parameters (embedding, final norm, lm_head) are used again as soon as the backward starts:
        # resharding them after the forward would only buy an immediate second all-gather.
        fully_shard(self.module, mesh=mesh, mp_policy=root_policy, reshard_after_forward=False)
        if on_meta:
            materialize(self.module, self.env.device)
        self.model = self.module
        self.optimizer = optimizer_fn(self.module)

    def reshard(self) -> None:
        # A unit that is not resharded after forward (the root, or every unit with reshard_after_forward=false)
        # keeps its all-gathered parameters until its backward. After a forward with no backward (the
        # diagnostics, between backward and the optimizer step) they would outlive the step, and the next
        # forward would compute with the weights from before it.
        from torch.distributed.fsdp import FSDPModule

        for module in self.module.modules():
            if isinstance(module, FSDPModule):
                module.reshard()

    def accumulate(self, last: bool) -> contextlib.AbstractContextManager:
        # Set on the root, recursing into every block: non-last micro-batches keep their gradients unsharded
        # (in the reduce dtype, fp32 under bf16-mixed) and skip the reduce-scatter (and HSDP's all-reduce);
        # the last one reduce-scatters the accumulated sum.
        if self.dist_cfg.fsdp_skip_grad_sync:
            cast("FSDPModule", self.module).set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def _state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.module, self.optimizer)
        return {"model": model_sd, "optim": optim_sd}

    def save(self, path: Path, written: WrittenFiles) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException

        # sync_files=False: the streams of _crc_file_system fsync themselves
        writer = dcp.FileSystemWriter(str(path / "dcp"), sync_files=False)
        writer.fs = _crc_file_system(written)
        try:
            dcp.save(self._state(), storage_writer=writer)
        except CheckpointException as err:  # a BaseException, raised on every rank with every rank's failure
            raise _dcp_failure(err) from None

    def load(self, path: Path, meta: dict[str, Any]) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        _expect_format(path, meta, self.format)
        state = self._state()
        dcp.load(state, checkpoint_id=str(path / "dcp"))
        set_state_dict(self.module, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(self.module, options=opts)  # full_state_dict=True: plain tensors
        return cast("dict[str, torch.Tensor]", state) if self.env.is_main else None


def deepspeed_config(dist_cfg: DistributedConfig, env: DistEnv, *, precision: str, micro_batch_size: int,
                     grad_accum_steps: int, grad_clip: float, load_universal: bool = False) -> dict[str, Any]:
    """The DeepSpeed JSON config for our settings (a torch optimizer is passed in, so no ``optimizer`` key)."""
    if dist_cfg.zero_stage not in (1, 2, 3):
        raise ConfigError(f"distributed.zero_stage must be 1, 2 or 3, got {dist_cfg.zero_stage}")
    zero: dict[str, Any] = {"stage": dist_cfg.zero_stage}
    if dist_cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": env.device.type == "cuda"}
    return {
        "train_batch_size": micro_batch_size * grad_accum_steps * env.world_size,
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "gradient_clipping": grad_clip,
        "zero_optimization": zero,
        # bf16-mixed is the numerics of every engine (docs/design.md): fp32 weights, Adam state and gradients
        # (accumulated and reduced in fp32: no module's gradients are communicated in bf16), bf16 matmuls through
        # torch.autocast, an fp32 residual stream. DeepSpeed's own bf16 mode would keep bf16 weights (a bf16
        # residual stream) and accumulate and reduce gradients in bf16. bf16-pure is refused in
        # DistributedConfig.check_precision.
        "bf16": {"enabled": False},
        "torch_autocast": {"enabled": precision == "bf16-mixed", "dtype": "bfloat16",
                           "lower_precision_safe_modules": []},
        "communication_data_type": "fp32",
        "zero_allow_untested_optimizer": True,
        # read once, at deepspeed.initialize: whether load_checkpoint() expects DeepSpeed's universal format
        "checkpoint": {"load_universal": load_universal},
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


class DeepSpeedEngine(Engine):
    """DeepSpeed ZeRO 1/2/3 around a torch optimizer; the accumulation boundary is set explicitly."""

    name = "deepspeed"
    format = "deepspeed"

    def setup(self, optimizer_fn: OptimizerFactory) -> None:
        import deepspeed

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        self.module.to(self.env.device)
        config = deepspeed_config(self.dist_cfg, self.env, precision=self.precision,
                                  micro_batch_size=self.micro_batch_size,
                                  grad_accum_steps=self.grad_accum_steps, grad_clip=self.grad_clip,
                                  load_universal=self.resume_reshards)
        optimizer = optimizer_fn(self.module)
        self.ds, self.optimizer, _, _ = deepspeed.initialize(
            model=self.module, optimizer=optimizer, config=config, dist_init_required=False)
        self.model = self.ds

    def accumulate(self, last: bool) -> contextlib.AbstractContextManager:
        self.ds.set_gradient_accumulation_boundary(last)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss, scale_wrt_gas=False)  # the loop's loss is already the global-batch mean

    def clip_grad_norm(self) -> torch.Tensor | None:
        return None  # DeepSpeed clips inside step() (``gradient_clipping``)

    def optimizer_step(self, lr: float, skip: torch.Tensor) -> torch.Tensor | None:
        # DeepSpeed decides on the host inside step() (its overflow check); this read costs no extra wait.
        # After a non-finite loss its overflow check drops the update; lr=0 keeps the parameters put either way.
        # A step its overflow check dropped (a non-finite gradient under a finite loss) comes back as a NaN norm,
        # so the loop counts it toward ``max_nonfinite_in_a_row`` like any other skipped step.
        set_lr(self.optimizer, 0.0 if bool(skip) else lr)
        self.ds.step()
        if not self.ds.was_step_applied():
            return torch.tensor(float("nan"))
        norm = self.ds.get_global_grad_norm()
        return None if norm is None else torch.as_tensor(float(norm))

    def save(self, path: Path, written: WrittenFiles) -> None:
        # save_checkpoint is full of collectives (and ZeRO-3's gather follows): a write that failed on one rank
        # must not send it out while the others wait in one. Its writes fail quietly and raise after the gather.
        deferred = _DeferredWrites(written)
        self.ds.checkpoint_engine = _deferring_checkpoint_engine(self.ds.checkpoint_engine, deferred)
        self.ds._copy_recovery_script = functools.partial(deferred.run, type(self.ds)._copy_recovery_script, self.ds)
        self.ds.save_checkpoint(str(path / "deepspeed"), tag="state", save_latest=False)
        state = self.full_state_dict()
        deferred.raise_first()
        if state is not None:
            written.save_safetensors(_unshare(state), path / MODEL_FILE)

    def load(self, path: Path, meta: dict[str, Any]) -> None:
        _expect_format(path, meta, self.format)
        universal = int(meta.get("world_size", self.env.world_size)) != self.env.world_size
        if universal != self.resume_reshards:  # set-up was told another checkpoint than the one resumed
            raise RunError(f"checkpoint {path} has world size {meta.get('world_size')}, but the engine was set up "
                           f"for {'another' if self.resume_reshards else 'the same'} world size")
        if universal:
            path = _universal_checkpoint(path, self.env)
        load_path, _ = self.ds.load_checkpoint(str(path / "deepspeed"), tag="state",
                                               load_optimizer_states=True, load_lr_scheduler_states=False)
        if load_path is None:
            raise RunError(f"DeepSpeed could not load the checkpoint in {path}: its model states under "
                           "deepspeed/state are missing or unreadable")

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        if self.dist_cfg.zero_stage < 3:
            return cpu_state_dict(self.module) if self.env.is_main else None
        import deepspeed

        # One module's own parameters gathered at a time and copied to the CPU on rank 0: gathering the whole
        # model at once would hold every parameter on every GPU (+14 GB each at 7B).
        keys = self.module.state_dict().keys()  # the names and order of a plain state dict (tied weights too)
        state: dict[str, torch.Tensor] = {}
        for prefix, module in self.module.named_modules():
            own = dict(module.named_parameters(prefix=prefix, recurse=False))
            if not own:
                continue
            with deepspeed.zero.GatheredParameters(list(own.values()), modifier_rank=None):
                if self.env.is_main:
                    state.update({name: p.detach().to("cpu", copy=True) for name, p in own.items()})
        if not self.env.is_main:
            return None
        buffers = dict(self.module.named_buffers())
        return {key: state[key] if key in state else buffers[key].detach().cpu() for key in keys}


class _DeferredWrites:
    """Writes whose first failure (an OSError) is kept, not raised, until :meth:`raise_first`; the writes
    after it are skipped."""

    def __init__(self, written: WrittenFiles):
        self.written = written
        self.error: OSError | None = None

    def run(self, write: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if self.error is not None:
            return
        try:
            write(*args, **kwargs)
        except OSError as err:
            self.error = err

    def raise_first(self) -> None:
        if self.error is not None:
            raise self.error


def _deferring_checkpoint_engine(current: Any, deferred: _DeferredWrites) -> Any:
    """DeepSpeed's torch checkpoint engine writing through ``deferred`` (CRC-32s kept, failures deferred)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class DeferringCheckpointEngine(TorchCheckpointEngine):
        def save(self, state_dict: Any, path: str) -> None:
            deferred.run(deferred.written.save_torch, state_dict, path,
                         _use_new_zipfile_serialization=self.zipfile_serialization)

        def makedirs(self, path: str, exist_ok: bool = False) -> None:
            deferred.run(os.makedirs, path, exist_ok=exist_ok)

    engine = DeferringCheckpointEngine()
    engine.zipfile_serialization = getattr(current, "zipfile_serialization", False)
    return engine


def _crc_file_system(written: WrittenFiles) -> Any:
    """DCP's file system, its files written through ``written`` (CRC-32 while writing, fsync on close)."""
    from torch.distributed.checkpoint.filesystem import FileSystem

    class CrcFileSystem(FileSystem):
        @contextlib.contextmanager
        def create_stream(self, path: str | os.PathLike, mode: str) -> Iterator[Any]:
            if "w" not in mode:
                with super().create_stream(path, mode) as stream:
                    yield stream
                return
            with written.open(path) as stream:
                yield stream

        def rename(self, path: str | os.PathLike, new_path: str | os.PathLike) -> None:
            written.rename(path, new_path)

    return CrcFileSystem()


def _dcp_failure(err: Any) -> Exception:
    """The first failed write (an OSError) inside DCP's CheckpointException, else the exception as a RuntimeError
    (CheckpointException is a BaseException: it would pass every ``except Exception``)."""
    failures = [f[0] if isinstance(f, tuple) else f for _, f in sorted(err.failures.items())]
    return next((f for f in failures if isinstance(f, OSError)), RuntimeError(f"DCP save failed: {err}"))


def _unshare(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied embeddings): give each key its own copy."""
    seen: set[int] = set()
    out = {}
    for key, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone().contiguous() if ptr in seen else tensor.contiguous()
        seen.add(ptr)
    return out


UNIVERSAL_WAIT_S = 12 * 3600.0  # the longest the other ranks wait for rank 0's conversion


def _universal_checkpoint(path: Path, env: DistEnv) -> Path:
    """Convert a DeepSpeed checkpoint to DeepSpeed's universal format (to resume on another world size).

    Rank 0 converts once into ``path/universal/deepspeed/state`` (a temp dir, then renamed); returns the
    directory to pass to ``load_checkpoint`` instead of ``path``. The other ranks wait for the result on the
    file system, not in a collective: a conversion of a large checkpoint can outlast the process group's
    timeout, and a failed one is reported on every rank (``.universal_failed`` holds rank 0's error).
    """
    out, failed = path / "universal", path / ".universal_failed"
    if env.is_main:
        failed.unlink(missing_ok=True)  # a marker left by an earlier attempt
    barrier(env)  # nobody reads a stale marker
    if env.is_main and not out.is_dir():
        try:
            _convert_to_universal(path, out)
        except Exception as err:  # noqa: BLE001 - reported to every rank, re-raised here
            failed.write_text(f"{type(err).__name__}: {err}")
            raise RunError(f"converting {path} to a universal checkpoint failed: {err}") from err
    _wait_for(out, failed, UNIVERSAL_WAIT_S)
    barrier(env)
    return out


def _convert_to_universal(path: Path, out: Path) -> None:
    import argparse
    import os
    import shutil

    from deepspeed.checkpoint import ds_to_universal

    tmp = path / ".tmp_universal"
    shutil.rmtree(tmp, ignore_errors=True)
    workers = max(1, min(8, (os.cpu_count() or 2) // 2))
    args = argparse.Namespace(
        input_folder=str(path / "deepspeed" / "state"), output_folder=str(tmp / "deepspeed" / "state"),
        num_extract_workers=workers, num_merge_workers=workers, keep_temp_folder=False, strict=True,
        inject_missing_state=True)
    log.info("converting %s to a universal checkpoint for a different world size (%d workers)", path, workers)
    ds_to_universal.main(args)
    tmp.rename(out)


def _wait_for(out: Path, failed: Path, timeout_s: float, poll_s: float = 2.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not out.is_dir():
        if failed.is_file():
            raise RunError(f"converting {out.parent} to a universal checkpoint failed on rank 0: "
                           f"{failed.read_text().strip()}")
        if time.monotonic() > deadline:
            raise RunError(f"rank 0 did not finish converting {out.parent} to a universal checkpoint within "
                           f"{timeout_s / 3600:.0f} h")
        time.sleep(poll_s)
