"""What we know about the Qwen role-play models: token limits and list prices."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ModelInfo:
    context: int
    max_input: int
    max_output: int
    input_price: float  # CNY per million tokens
    output_price: float


MODELS: dict[str, ModelInfo] = {
    "qwen-plus-character": ModelInfo(32_768, 30_000, 4_000, 0.8, 2.0),
    "qwen-flash-character": ModelInfo(8_192, 8_000, 4_096, 0.25, 1.5),
    "qwen-plus-character-ja": ModelInfo(8_192, 7_680, 512, 3.67, 10.275),
}
UNKNOWN_INPUT_LIMIT = 8_000


def input_limit(model: str, configured: int = 0) -> int:
    """The prompt token budget: the configured one, else the model table's, else a safe default."""
    if configured > 0:
        return configured
    info = MODELS.get(model)
    return info.max_input if info else UNKNOWN_INPUT_LIMIT


def estimated_cost(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """List-price cost in CNY, an upper bound (cache hits are billed lower); None if unknown."""
    info = MODELS.get(model)
    if info is None:
        return None
    return (prompt_tokens * info.input_price + completion_tokens * info.output_price) / 1_000_000
