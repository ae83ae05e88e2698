"""The training loop shared by pre-training and SFT, its optimizer/schedule and metrics."""

from cod_train.train.loop import Trainer, TrainResult, grad_accum_steps, train
from cod_train.train.optim import build_optimizer, lr_at

__all__ = ["TrainResult", "Trainer", "build_optimizer", "grad_accum_steps", "lr_at", "train"]
