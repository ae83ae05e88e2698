"""Thin Hydra entry points: cod-pretrain, cod-sft, cod-eval, cod-analyze, cod-export, cod-report, cod-data."""
