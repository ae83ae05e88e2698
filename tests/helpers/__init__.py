"""Helpers shared by the test modules (a test module imports these, not another test module):

- ``processes``: the repository root, the subprocess environment, ``run_checked`` / ``torchrun``, ``free_port``;
- ``run_dirs``: a run directory's metrics (``metric_rows``, ``losses``);
- ``models``: ``tiny_model(**axes)`` and its ``ModelConfig`` (one tiny shape for every model test);
- ``batches``: deterministic world-size-invariant synthetic batches and a NaN / Inf injector;
- ``engine_run``: the engine tests' tiny pretraining config and in-process run driver;
- ``cli``: running a ``cod-*`` command in this process, and the tiny ``cod-pretrain`` overrides;
- ``tokenizers``: a character-level tokenizer and a tiny saved Hugging Face model;
- ``hand``: hidden states computed by hand, layer by layer (the depth analyses' expectation);
- ``zoo``: the depth zoo's tiny model, each layer's placement from the papers, learned scalars off their init;
- ``hc_reference``: hyper-connections / mHC as a plain float64 formulation, and their weights off their init;
- ``diagnostics``: the depth diagnostics tests' tiny HF Llama and own models, batches, identity layers, backward;
- ``analyze_runs``: cod-analyze's inputs (a word-level tokenizer, held-out text, run directories with hf/);
- ``plan``: the runs cod-plan's tests validate (``plan_config``).
"""
