"""Evaluation: perplexity, downstream accuracy (lm-eval-harness) and depth diagnostics."""
