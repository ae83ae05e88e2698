"""Constants shared across layers."""

IGNORE_INDEX = -100  # label of a position that does not count in the loss (padding, prompt tokens)
