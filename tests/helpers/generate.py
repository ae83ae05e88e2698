"""Greedy decoding checks shared by the scheme tests: generate() with the KV cache == without == by hand."""

from __future__ import annotations

import torch


def left_padded_prompt(batch: int = 3, length: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prompts (ids 1..95) whose rows 1 and 2 are left-padded with 3 and 5 pad tokens (id 0)."""
    prompt = torch.randint(1, 96, (batch, length))
    mask = torch.ones_like(prompt)
    mask[1, :3] = 0
    mask[2, :5] = 0
    return prompt.masked_fill(mask == 0, 0), mask


def manual_greedy(model, prompt: torch.Tensor, mask: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding by hand: the argmax of a full forward (no cache) over the whole sequence at each step;
    a row that emitted EOS continues with the pad token (0), as generate() does."""
    eos = model.config.eos_token_id
    seq, mask, done = prompt, mask, torch.zeros(len(prompt), dtype=torch.bool)
    for _ in range(steps):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=seq, attention_mask=mask, position_ids=positions, use_cache=False).logits
        nxt = logits[:, -1].argmax(-1).masked_fill(done, 0)
        done |= nxt == eos
        seq = torch.cat([seq, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return seq


def assert_cached_generate_is_greedy(model, steps: int = 8) -> None:
    """generate() on left-padded prompts: with the KV cache == without it == greedy decoding by hand."""
    prompt, mask = left_padded_prompt()
    kw = dict(attention_mask=mask, max_new_tokens=steps, do_sample=False, pad_token_id=0)
    cached = model.generate(prompt, **kw)
    assert torch.equal(cached, model.generate(prompt, use_cache=False, **kw))
    assert torch.equal(cached, manual_greedy(model, prompt, mask, steps))
