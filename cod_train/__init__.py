"""cod-train: LLaMA pre-training with the normalization placement as a first-class, sweepable choice.

Importing the package registers the `cod_llama` model type with transformers' Auto classes.
"""

from cod_train.model import register as _register

__version__ = "0.1.0"

_register()
