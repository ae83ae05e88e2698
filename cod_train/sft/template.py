"""Prompt templates and response-only labels.

A template turns an :class:`Example` into text segments, each marked trainable (a response) or not (a
prompt). :func:`encode` tokenizes the segments one by one, so exactly the response tokens (and the eos
that ends each alpaca response) count; labels are already shifted (``labels[t]`` is the target of
position t, ``-100`` where it does not count), as the training loop expects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cod_train.core.constants import IGNORE_INDEX
from cod_train.sft.config import SFTDataConfig
from cod_train.sft.records import Example, SFTDataError


@dataclass(frozen=True)
class Segment:
    text: str
    trainable: bool
    eos: bool = False  # append the tokenizer's eos (trainable) after this segment


def resolve_template(template: str, tokenizer: Any) -> str:
    """``auto`` -> ``chat`` when the tokenizer has a chat template, else ``alpaca``."""
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template == "auto":
        return "chat" if has_chat else "alpaca"
    if template == "chat" and not has_chat:
        raise SFTDataError("sft.template=chat but the tokenizer has no chat template; use sft.template=alpaca")
    return template


def alpaca_segments(ex: Example, cfg: SFTDataConfig) -> list[Segment]:
    """The alpaca prompt (``sft.prompt`` / ``sft.prompt_no_input``); multi-turn chats repeat its turn layout."""
    if ex.alpaca is not None:
        a = ex.alpaca
        prompt = cfg.prompt.format(**a) if a["input"] else cfg.prompt_no_input.format(**a)
        return [Segment(prompt, False), Segment(a["output"], True, eos=True)]
    segs: list[Segment] = []
    system = "".join(m["content"] + "\n\n" for m in ex.messages if m["role"] == "system")
    for m in ex.messages:
        if m["role"] == "user":
            fmt = cfg.prompt_followup if segs else cfg.prompt_no_input
            text = fmt.replace("{input}", "").format(instruction=m["content"])
            segs.append(Segment(text if segs else system + text, False))
        elif m["role"] == "assistant":
            segs.append(Segment(m["content"], True, eos=True))
    return segs


def chat_segments(ex: Example, tokenizer: Any) -> list[Segment]:
    """Render with the tokenizer's chat template; each assistant turn (with its end marker) is trainable.

    The assistant span of turn i is ``render(messages[:i+1])`` minus ``render(messages[:i], generation
    prompt)``; a template whose renders are not prefixes of each other is rejected.
    """
    msgs, segs, prev = ex.messages, [], ""
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True) if i else ""
        full = tokenizer.apply_chat_template(msgs[: i + 1], tokenize=False)
        if not (prompt.startswith(prev) and full.startswith(prompt)):
            raise SFTDataError(
                f"{ex.source}: the tokenizer's chat template does not render turns as prefixes of each other, "
                "so response tokens cannot be located; use sft.template=alpaca"
            )
        segs += [Segment(prompt[len(prev):], False), Segment(full[len(prompt):], True)]
        prev = full
    return segs


def segments(ex: Example, template: str, tokenizer: Any, cfg: SFTDataConfig) -> list[Segment]:
    return chat_segments(ex, tokenizer) if template == "chat" else alpaca_segments(ex, cfg)


def token_mask(segs: list[Segment], tokenizer: Any, add_bos: bool) -> tuple[list[int], list[bool]]:
    """Token ids of the whole example and, per token, whether it is a response token."""
    ids: list[int] = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
    mask = [False] * len(ids)
    for seg in segs:
        toks = tokenizer(seg.text, add_special_tokens=False)["input_ids"] if seg.text else []
        ids += toks
        mask += [seg.trainable] * len(toks)
        if seg.eos:
            ids.append(tokenizer.eos_token_id)
            mask.append(True)
    return ids, mask


def shift(ids: list[int], mask: list[bool], max_length: int) -> tuple[list[int], list[int]]:
    """``input_ids = ids[:-1]``, ``labels[t] = ids[t+1]`` if token t+1 is a response token else -100."""
    ids, mask = ids[: max_length + 1], mask[: max_length + 1]
    labels = [tok if keep else IGNORE_INDEX for tok, keep in zip(ids[1:], mask[1:], strict=True)]
    return ids[:-1], labels


def encode(ex: Example, template: str, tokenizer: Any, cfg: SFTDataConfig) -> tuple[list[int], list[int]]:
    """One example -> ``(input_ids, labels)`` of at most ``cfg.row_length`` tokens."""
    segs = segments(ex, template, tokenizer, cfg)
    ids, mask = token_mask(segs, tokenizer, add_bos=template == "alpaca")
    return shift(ids, mask, cfg.row_length)
