"""cod-train: LLaMA pre-training with the normalization placement as a first-class, sweepable choice.

Importing the package registers the `cod_llama` model type with transformers' Auto classes (importing
`cod_train.model` does too). The exception is the process of one of the project's commands (`cod-pretrain`,
...): registering needs torch, seconds to import, and a command first validates its configuration so that a
bad one exits 2 at once; it imports `cod_train.model`, and so registers, when it needs a model.
"""

from __future__ import annotations

import os
import sys

__version__ = "0.1.0"

COMMANDS = ("cod-pretrain", "cod-sft", "cod-eval", "cod-analyze", "cod-export", "cod-report", "cod-data")

if os.path.basename(getattr(sys, "argv", [""])[0] if getattr(sys, "argv", None) else "") not in COMMANDS:
    from cod_train.model import register as _register

    _register()
