"""Bounded retries: exponential backoff with jitter, Retry-After, an injected sleep."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from core.backends.base import GiveUpError, MalformedResponseError

log = logging.getLogger("salon.backend")

T = TypeVar("T")

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 30.0
RETRY_AFTER_CAP_S = 60.0


class TransientFault(Exception):
    """A retryable fault (429, 5xx, timeout, reset, broken stream); never leaves the backend."""

    def __init__(self, cause: str, retry_after: float | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 4
    base_s: float = BACKOFF_BASE_S
    cap_s: float = BACKOFF_CAP_S


def backoff_delay(retry: int, rng: random.Random, policy: RetryPolicy = RetryPolicy()) -> float:
    """Delay before retry number `retry` (0-based): half fixed, half random, capped."""
    ceiling = min(policy.cap_s, policy.base_s * 2.0 ** min(retry, 30))
    return ceiling / 2 + rng.uniform(0.0, ceiling / 2)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header, capped so one reply cannot park a channel for hours."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), RETRY_AFTER_CAP_S)


async def with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    sleep: Callable[[float], Awaitable[None]],
    rng: random.Random,
    where: str,
) -> T:
    """Run `attempt` until it succeeds, a fatal error escapes, or the retries run out.

    Transient faults are retried `policy.max_retries` times, then become GiveUpError;
    a malformed response is retried once (within the same budget), then re-raised.
    """
    retries = 0
    malformed_seen = False
    while True:
        try:
            return await attempt()
        except TransientFault as fault:
            if retries >= policy.max_retries:
                raise GiveUpError(
                    f"the model server at {where} kept failing after {retries + 1} attempts; "
                    f"last cause: {fault.cause}"
                ) from fault
            cause, retry_after = fault.cause, fault.retry_after
        except MalformedResponseError as error:
            if malformed_seen or retries >= policy.max_retries:
                raise
            malformed_seen = True
            cause, retry_after = str(error), None
        delay = retry_after if retry_after is not None else backoff_delay(retries, rng, policy)
        retries += 1
        log.warning(
            "model request to %s failed (%s); retry %d/%d in %.2f s",
            where,
            cause,
            retries,
            policy.max_retries,
            delay,
        )
        await sleep(delay)
