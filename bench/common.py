"""What every benchmark shares: a scratch salon set-up, an instant model, a recording adapter.

The benchmarks drive the real engine, policy and SQLite store; only the model and the chat
platform are replaced, by in-process objects that cost (almost) nothing.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.backends.base import ChatRequest, ChatResult
from core.clock import Clock
from core.config import Character, Settings, load_settings, resolve_character
from core.prompt import estimate_tokens
from core.types import Channel, Outgoing, Participant, Sent

CHARACTER_KEY = "bench_lu"
CHARACTER_NAME = "Ling Lu"
PROFILE = (
    "In a group chat scenario for musicians, Ling Lu is a 25-year-old musical genius known for "
    "his sharp tongue and regional accent. He is a music partner with Cheng Yi and in a "
    "relationship with Tao Le. Maintain the character's sharp-tongued yet secretly caring "
    "personality, use colloquial expressions, and keep each reply under 40 characters."
)
HUMANS = ("Cheng Yi", "Tao Le", "Mia", "Oskar", "Ravi", "Yuki")
_CHATTER = (
    "the live stream tonight needs a better mix and the drums are too loud again "
    "who is bringing the bass did anyone hear the new demo I think the chorus drags "
    "let us meet at eight the venue changed the guitar tone is great but the vocals "
    "sit too far back my cat walked over the keyboard during the take coffee first "
    "rehearsal moved to Sunday the chat is quiet today what key is the bridge in"
)
WORDS = tuple(_CHATTER.split())
REPLIES = (
    "Ling Lu: Too loud? You just can't keep up.",
    "Sure, if someone brings snacks this time.",
    "Ling Lu: That chorus is fine. Your ears drag.",
    "Eight works. Don't be late again.",
    "Fine, I'll fix the mix. You owe me.",
)


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured figure next to the baseline it is compared with, measured in the same run."""

    bench: str
    name: str
    value: float
    unit: str
    baseline_name: str
    baseline: float
    target: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else math.inf


@dataclass(frozen=True, slots=True)
class BenchResult:
    """A benchmark's headline figures plus the supporting numbers it printed."""

    name: str
    figures: tuple[Figure, ...]
    details: Mapping[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def write_setup(
    root: Path,
    *,
    behavior: Mapping[str, float | int],
    input_limit: int = 0,
    history_messages: int = 400,
    db_name: str = "bench.db",
) -> tuple[Settings, Character]:
    """A config.toml and a character file in `root`; the database is a WAL file there too."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.toml"
    config.write_text(
        "[llm]\n"
        'provider = "openai"\n'
        'base_url = "http://127.0.0.1:9/v1"\n'
        'api_key_env = "SALON_BENCH_KEY"\n'
        'model = "qwen-plus-character"\n'
        f"input_limit = {int(input_limit)}\n"
        "[storage]\n"
        f'path = "{db_name}"\n'
        "[salon]\n"
        'bots_dir = ""\n'
        f"history_messages = {int(history_messages)}\n",
        encoding="utf-8",
    )
    knobs = "".join(f"{key} = {value!r}\n" for key, value in behavior.items())
    bot = root / f"{CHARACTER_KEY}.toml"
    bot.write_text(
        f'name = "{CHARACTER_NAME}"\naliases = ["Lu"]\nprofile = """{PROFILE}"""\n'
        f"[behavior]\n{knobs}",
        encoding="utf-8",
    )
    return load_settings(config, env={}), resolve_character(str(bot))


def chat_text(rng: random.Random, low: int = 3, high: int = 22) -> str:
    """A plausible chat line that never names the character (so only addressing triggers it)."""
    words = rng.choices(WORDS, k=rng.randint(low, high))
    return " ".join(words).capitalize() + rng.choice((".", "?", "!", ""))


def humans(channel: Channel) -> tuple[Participant, ...]:
    return tuple(Participant(f"{channel.id}-u{i}", name) for i, name in enumerate(HUMANS))


def prompt_tokens(messages: Sequence[Mapping[str, object]]) -> int:
    return sum(estimate_tokens(str(m.get("content", ""))) for m in messages)


class InstantBackend:
    """A model that answers at once with canned lines; reports usage like a real server."""

    def __init__(self, *, keep: bool = False) -> None:
        self.calls = 0
        self.keep = keep
        self.requests: list[ChatRequest] = []
        self.on_request: Callable[[ChatRequest], None] | None = None

    async def complete(self, request: ChatRequest) -> ChatResult:
        self.calls += 1
        if self.keep:
            self.requests.append(request)
        if self.on_request is not None:
            self.on_request(request)
        text = REPLIES[self.calls % len(REPLIES)]
        return ChatResult((text,), prompt_tokens(request.messages), estimate_tokens(text), 0)

    async def aclose(self) -> None:
        return None


class RecordingSender:
    """An in-process adapter: hands every reply piece to `on_send` the moment it is posted."""

    max_length = 2000

    def __init__(self, clock: Clock, on_send: Callable[[Outgoing], None] | None = None) -> None:
        self._clock = clock
        self._on_send = on_send
        self.sent = 0

    async def send(self, out: Outgoing) -> Sent:
        self.sent += 1
        if self._on_send is not None:
            self._on_send(out)
        return Sent(f"bench-reply-{self.sent}", self._clock.now())

    async def typing(self, channel: Channel) -> None:
        return None


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    return percentile(values, 50.0)


def rss_bytes() -> int:
    """This process's resident set size, from /proc (Linux) or getrusage's peak elsewhere."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
