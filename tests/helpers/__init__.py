"""Helpers shared by the test modules (a test module imports these, not another test module):

- ``processes``: the repository root, the subprocess environment, ``run_checked`` / ``torchrun``, ``free_port``;
- ``run_dirs``: a run directory's metrics (``metric_rows``, ``losses``);
- ``models``: ``tiny_model(**axes)`` and its ``ModelConfig`` (one tiny shape for every model test);
- ``batches``: deterministic world-size-invariant synthetic batches and a NaN / Inf injector;
- ``engine_run``: the engine tests' tiny pretraining config and in-process run driver;
- ``cli``: running a ``cod-*`` command in this process, and the tiny ``cod-pretrain`` overrides;
- ``tokenizers``: a character-level tokenizer and a tiny saved Hugging Face model;
- ``hand``: hidden states computed by hand, layer by layer (the depth analyses' expectation).
"""
