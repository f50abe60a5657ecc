"""Prefill dialects: how each kind of server is told "continue this assistant line".

Canonical messages end with `{"role": "assistant", "content": "Name:", "partial": True}`;
servers disagree on how to express that, so the backend rewrites it just before sending.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

PrefillSetting = Literal["partial", "prefix", "continue_final_message", "auto", "none"]
Dialect = Literal["partial", "prefix", "continue_final_message", "generic", "none"]

PREFILL_SETTINGS: tuple[str, ...] = ("partial", "prefix", "continue_final_message", "auto", "none")

_FIXED: Mapping[str, Dialect] = {
    "partial": "partial",
    "prefix": "prefix",
    "continue_final_message": "continue_final_message",
    "none": "none",
}
_CONTINUE_FIELDS: Mapping[str, Any] = {
    "continue_final_message": True,
    "add_generation_prompt": False,
}


@dataclass(frozen=True, slots=True)
class Prefilled:
    """Messages ready to send plus extra request fields the dialect needs."""

    messages: tuple[dict[str, Any], ...]
    extra: Mapping[str, Any] = field(default_factory=dict)


def resolve_dialect(setting: str, *, provider: str, base_url: str) -> Dialect:
    """Turn the configured prefill setting into a concrete dialect ("auto" looks at the host)."""
    if setting == "auto":
        host = (urlsplit(base_url).hostname or "").lower()
        if provider == "dashscope" or "dashscope" in host:
            return "partial"
        if "deepseek" in host:
            return "prefix"
        return "generic"
    fixed = _FIXED.get(setting)
    if fixed is None:
        choices = ", ".join(PREFILL_SETTINGS)
        raise ValueError(f"unknown prefill setting {setting!r}; use one of {choices}")
    return fixed


def is_prefill(message: Mapping[str, Any]) -> bool:
    return message.get("role") == "assistant" and bool(message.get("partial"))


def apply_prefill(
    messages: Sequence[Mapping[str, Any]], dialect: Dialect, *, speaker: str | None = None
) -> Prefilled:
    """Rewrite a trailing prefill for `dialect`; anything else passes through unchanged."""
    copied = [dict(m) for m in messages]
    for message in copied[:-1]:
        if message.get("partial"):
            raise ValueError("only the last message may carry 'partial'")
    if not copied or not is_prefill(copied[-1]):
        if copied and copied[-1].get("partial"):
            raise ValueError("'partial' is only valid on an assistant message")
        return Prefilled(tuple(copied))
    last = copied[-1]
    if dialect == "partial":
        return Prefilled(tuple(copied))
    if dialect == "prefix":
        del last["partial"]
        last["prefix"] = True
        return Prefilled(tuple(copied))
    if dialect == "continue_final_message":
        del last["partial"]
        return Prefilled(tuple(copied), dict(_CONTINUE_FIELDS))
    if dialect == "generic":
        del last["partial"]
        extra = {**_CONTINUE_FIELDS, "chat_template_kwargs": {"enable_thinking": False}}
        return Prefilled(tuple(copied), extra)
    name = speaker or _name_from_prefill(last)
    instruction = {
        "role": "system",
        "content": f"Reply as {name} with one message, without writing your name.",
    }
    return Prefilled((*copied[:-1], instruction))


def _name_from_prefill(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    text = content if isinstance(content, str) else ""
    return text.strip().rstrip(":：").strip()
