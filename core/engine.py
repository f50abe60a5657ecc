"""The orchestrator: one actor per channel that persists, decides, builds, generates and posts."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from core import prompt as P
from core.backends.base import (
    AuthError,
    Backend,
    BackendError,
    ChatRequest,
    GenerationParams,
    ModerationError,
)
from core.clock import Clock, RealClock, TimerHandle, VirtualClock
from core.lines import (
    ADDRESSED,
    AUTHOR_ID,
    AUTHOR_NAME,
    CHARACTER,
    IS_BOT,
    MSG_ID,
    SEQ,
    TEXT,
    TOKENS,
    Line,
    line,
)
from core.models import estimated_cost, input_limit
from core.policy import Candidate, Decision, Knobs, decide
from core.rows import RowCache
from core.slots import PrioritySlots
from core.store import Store, StoredMessage, StoreError
from core.text import clean_reply, split_message
from core.types import (
    Channel,
    CommandResult,
    Edit,
    Incoming,
    Message,
    Outgoing,
    Participant,
    Sender,
)

if TYPE_CHECKING:
    from core.config import Character, Settings

log = logging.getLogger("salon.engine")
decisions_log = logging.getLogger("salon.decision")

POLICY_WINDOW = 40
TYPING_EVERY_S = 4.0
FLUSH_EVERY_S = 5.0
FLUSH_SLICE = 64
CHANNEL = ""  # state key for channel-wide state (notes, direct flag)
COMMANDS = ("reset", "regen", "why", "stats", "mute", "unmute", "help")
HELP = (
    "/reset – forget the conversation so far · /regen – replace the last reply · "
    "/why – why the character spoke or stayed silent · /stats – tokens and cost · "
    "/mute, /unmute – silence the character here"
)


@dataclass(slots=True)
class _Actor:
    """Per-channel runtime: who is present, the lock that serialises turns, pending timers."""

    channel: Channel
    senders: dict[str, Sender] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    debounce: TimerHandle | None = None
    wake: TimerHandle | None = None
    queued: bool = False  # a turn is spawned and has not taken its look at the channel yet
    present: tuple[str, ...] = ()  # the keys of `senders`, sorted
    debounce_s: float = 0.0  # the longest debounce among the present characters
    meta_saved: bool = False
    states: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Fixed:
    """What every decision and request needs of a character, derived once per engine (the
    characters never change while it runs) rather than once per message."""

    names: tuple[str, ...]
    knobs: Knobs
    params: GenerationParams
    persona: P.Persona
    reserved: tuple[str, ...]  # the other characters' names and aliases
    profile_tokens: int  # the profile's token estimate, with room for the request's framing

    @classmethod
    def of(cls, ch: Character, others: list[Character]) -> _Fixed:
        b, gen = ch.behavior, ch.generation
        return cls(
            names=(ch.name, *ch.aliases),
            knobs=Knobs(
                talkativeness=b.talkativeness,
                continue_after_s=b.continue_after_s,
                max_continuations=b.max_continuations,
                continue_backoff=b.continue_backoff,
                cooldown_s=b.cooldown_s,
            ),
            params=GenerationParams(
                temperature=gen.temperature,
                top_p=gen.top_p,
                seed=gen.seed,
                max_tokens=gen.max_tokens,
                n=gen.n,
                logit_bias=ch.logit_bias(),
            ),
            persona=P.Persona(ch.name, ch.profile, tuple(ch.aliases)),
            reserved=tuple(n for c in others for n in (c.name, *c.aliases)),
            profile_tokens=P.estimate_tokens(ch.profile) + 64,
        )


def _backlog(recent: list[Line], cands: list[Candidate]) -> int | None:
    """The oldest handled mark when messages after it are older than `recent` (a backlog to
    look back over), else None."""
    behind = min([c.handled_seq for c in cands], default=0)
    return behind if recent and behind + 1 < recent[0][SEQ] else None


def _day(ts: float) -> str:
    """The UTC day of `ts` as YYYY-MM-DD (formatted once per day, not once per reply)."""
    return _day_name(int(ts // 86_400))


@functools.lru_cache(maxsize=4)
def _day_name(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86_400))


@functools.lru_cache(maxsize=4096)
def _session_id(channel_key: str, key: str, epoch: int) -> str:
    """The provider's session cache key: stable per (channel, character) until /reset."""
    digest = hashlib.sha1(f"{channel_key}|{key}|{epoch}".encode()).hexdigest()[:24]
    return f"salon-{digest}"


def _turn(r: Line, key: str) -> P.Turn:
    """A line as a turn of the prompt for character `key`."""
    return P.Turn(r[SEQ], r[AUTHOR_ID], r[AUTHOR_NAME], r[TEXT], r[CHARACTER] == key, r[CHARACTER])


def _reused(source: tuple[Any, ...] | None, rows: list[Line], start: int) -> tuple[int, int]:
    """How many leading `rows` a memo built from `source` has seen unchanged (0: cannot tell),
    and their token estimate.

    `source` is (first line, last line, line count, window start, tokens) of the last build.
    The message cache never changes a line in place (an edit drops the channel and a load makes
    new tuples), so the same first and last line objects at the same places mean the same lines.
    """
    if source is None or source[3] != start:
        return 0, 0
    first, last, count, _, tokens = source
    if len(rows) < count or rows[0] is not first or rows[count - 1] is not last:
        return 0, 0
    return int(count), int(tokens)


class Engine:
    """Everything platform-neutral that happens between an incoming event and a posted reply."""

    def __init__(
        self,
        *,
        settings: Settings,
        characters: Mapping[str, Character],
        store: Store,
        backend: Backend,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.characters = dict(characters)
        self.store = store
        self.backend = backend
        self.clock: Clock = clock or RealClock()
        self.rng = rng or random.Random()
        self.fatal: BackendError | StoreError | None = None
        self._actors: dict[str, _Actor] = {}
        self._identities: dict[tuple[str, str], str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._model_slots = PrioritySlots(settings.llm.max_concurrency)
        self._budget_warned: set[tuple[str, str]] = set()
        self._clock_waits = 0
        self._dirty: set[tuple[str, str]] = set()
        self._fixed = {
            key: _Fixed.of(ch, [c for k, c in self.characters.items() if k != key])
            for key, ch in self.characters.items()
        }
        self._virtual = isinstance(self.clock, VirtualClock)
        self._rows = RowCache(
            budget=settings.storage.cache_mb * 2**20,
            per_channel=max(settings.salon.history_messages + 1, POLICY_WINDOW),
        )
        # rendered prompts reused by the next reply, least recently used dropped past the
        # same budget as the message cache's (a 120-turn prompt holds about 45 KB)
        self._memos: dict[tuple[str, str], P.Rendered] = {}
        self._memo_bytes = 0
        self._memo_budget = settings.storage.cache_mb * 2**20
        self.on_fatal: Callable[[Exception], None] | None = None

    # ----- identities -------------------------------------------------------------------
    def register_identity(self, platform: str, user_id: str, character: str) -> None:
        self._identities[(platform, user_id)] = character

    def character_for(self, platform: str, user_id: str) -> str | None:
        return self._identities.get((platform, user_id))

    def _author(self, key: str, platform: str) -> Participant:
        user_id = next(
            (uid for (p, uid), k in self._identities.items() if p == platform and k == key),
            f"salon:{key}",
        )
        return Participant(user_id, self.characters[key].name, is_bot=True, character=key)

    # ----- state (cached per channel, written through to the store) -----------------------
    async def _state(self, channel: Channel, key: str, *, copy: bool = True) -> dict[str, Any]:
        """The state (a copy to change and save; `copy=False` only to read it)."""
        actor = self._actors.get(channel.key)
        if actor is None:
            return await self.store.get_state(channel, key)
        cached = actor.states.get(key)
        if cached is None:
            cached = actor.states[key] = await self.store.get_state(channel, key)
        return dict(cached) if copy else cached

    async def _save(self, channel: Channel, key: str, state: dict[str, Any]) -> None:
        """Cache the state and write it now."""
        actor = self._actors.get(channel.key)
        if actor is not None:
            actor.states[key] = dict(state)
        self._dirty.discard((channel.key, key))
        await self.store.put_state(channel, key, state)

    def _defer(self, channel: Channel, key: str) -> None:
        """The cached state changed: write it within FLUSH_EVERY_S.

        Only silent decisions and what follows a posted reply are deferred: losing one in a
        crash means a chatter roll is made again after the restart, or a cooldown is forgotten,
        never an addressed message answered twice or not at all (the answering mark written
        before the model is asked, with the stored reply, marks it handled).
        """
        if not self._dirty:
            asyncio.get_running_loop().call_later(FLUSH_EVERY_S, self._spawn_flush)
        self._dirty.add((channel.key, key))

    def _spawn_flush(self) -> None:
        if self._dirty:
            self._spawn(self.flush_state(spread_s=FLUSH_EVERY_S / 2))

    async def flush_state(self, *, spread_s: float = 0.0) -> None:
        """Write every deferred state (also at shutdown), spread over `spread_s` seconds.

        Spreading keeps a thousand busy channels' states from taking the loop for one long
        stretch, which every message arriving meanwhile would wait behind.
        """
        dirty, self._dirty = self._dirty, set()
        states = []
        for channel_key, key in sorted(dirty):
            actor = self._actors.get(channel_key)
            if actor is not None and key in actor.states:
                states.append((actor.channel, key, actor.states[key]))
        slices = range(0, len(states), FLUSH_SLICE)
        gap = spread_s / len(slices) if len(slices) > 1 else 0.0
        for i in slices:
            if i and gap > 0:
                await asyncio.sleep(gap)
            await self.store.put_states(states[i : i + FLUSH_SLICE])

    # ----- recent messages (cached per channel; the store stays the source of truth) --------
    async def _recent(self, actor: _Actor) -> list[Line]:
        return await self._history(actor, 0, POLICY_WINDOW)

    async def _history(self, actor: _Actor, after: int, limit: int) -> list[Line]:
        """The newest `limit` messages after seq `after`, oldest first; from memory if held."""
        cached = self._rows.lookup(actor.channel.key, after, limit)
        return cached if cached is not None else await self._load(actor, after, limit)

    async def _load(self, actor: _Actor, after: int, limit: int) -> list[Line]:
        """`_history` from the store, kept in memory for the next look."""
        key = actor.channel.key
        token = self._rows.begin_load(key)
        try:
            loaded = await self.store.recent(actor.channel, after_seq=after, limit=limit)
        except BaseException:
            self._rows.cancel_load(key)
            raise
        return self._rows.end_load(key, token, after, limit, [line(r) for r in loaded])

    def _channel_actor(self, channel: Channel) -> _Actor:
        actor = self._actors.get(channel.key)
        if actor is None:
            actor = self._actors[channel.key] = _Actor(channel)
        return actor

    async def _store_message(self, actor: _Actor, message: Message) -> StoredMessage:
        result = await self.store.add_message(message)
        if result.new or result.newly_addressed:
            self._rows.add(actor.channel.key, line(result.record))
        return result.record

    # ----- events ------------------------------------------------------------------------
    async def _actor(
        self, channel: Channel, via: str, sender: Sender, *, baseline: int | None = None
    ) -> _Actor:
        """The channel's actor, with `via` present in it.

        A newcomer does not owe answers to what was said before it arrived: its handled mark
        starts at `baseline` (the message before the one it arrives with), else the last message.
        """
        if via not in self.characters:
            raise KeyError(f"unknown character {via!r}")
        actor = self._channel_actor(channel)
        if via not in actor.senders:
            state = await self._state(channel, via)
            if not state:
                start = baseline if baseline is not None else await self._last_seq(channel)
                await self._save(channel, via, {"handled_seq": start})
        actor.senders[via] = sender
        if via not in actor.present:
            actor.present = tuple(sorted(actor.senders))
            actor.debounce_s = max(self.characters[k].behavior.debounce_s for k in actor.present)
        if not actor.meta_saved:
            meta = await self._state(channel, CHANNEL)
            if meta.get("direct") != channel.direct:
                await self._save(channel, CHANNEL, {**meta, "direct": channel.direct})
            actor.meta_saved = True
        return actor

    async def receive(self, event: Incoming, *, via: str, sender: Sender) -> None:
        """Persist the event, then let the channel decide; returns once the event is stored."""
        if via not in self.characters:
            raise KeyError(f"unknown character {via!r}")
        if isinstance(event, Message):
            author = event.author
            known = self.character_for(event.channel.platform, author.id)
            if author.character is None and known is not None:
                author = replace(author, is_bot=True, character=known)
                event = replace(event, author=author)
            # stored first; a newcomer joins with this message as its first to answer
            actor = self._channel_actor(event.channel)
            record = await self._store_message(actor, event)
            if actor.senders.get(via) is not sender or not actor.meta_saved:
                actor = await self._actor(event.channel, via, sender, baseline=record.seq - 1)
            if self._decides_at_once(actor):
                await self._turn_at_once(actor)
            else:
                self._kick(actor)
            return
        actor = await self._actor(event.channel, via, sender)
        if isinstance(event, Edit):
            await self.store.edit_message(event.channel, event.id, event.text, event.at)
        else:
            await self.store.delete_message(event.channel, event.id)
        self._rows.invalidate(event.channel.key)

    async def open_direct(self, channel: Channel, *, via: str, sender: Sender) -> None:
        """A direct chat starts: post the greeting if nothing has been said here yet."""
        actor = await self._actor(channel, via, sender)
        greeting = self.characters[via].greeting
        async with actor.lock:
            if not greeting or await self.store.last_message(channel) is not None:
                return
            await self._post(actor, via, greeting, reply_to=None)
            state = await self._state(channel, via)
            state.update(last_spoke_at=self.clock.now(), continuations=0)
            await self._save(channel, via, state)
        self._kick(actor)

    async def resume(
        self,
        platform: str,
        *,
        via: str,
        sender: Sender,
        since_s: float = 86_400.0,
        only: Channel | None = None,
    ) -> int:
        """After a restart: let channels where `via` lives and that have news decide again."""
        count = 0
        for channel_id, _ in await self.store.active_channels(platform, self.clock.now() - since_s):
            if only is not None and only.id != channel_id:
                continue
            meta = await self._state(Channel(platform, channel_id), CHANNEL)
            channel = Channel(platform, channel_id, bool(meta.get("direct", False)))
            if not await self._state(channel, via):
                continue
            self._kick(await self._actor(channel, via, sender))
            count += 1
        return count

    def _fail(self, error: BackendError | StoreError) -> None:
        """An error no retry can fix (rejected key, broken database): stop speaking, say it once."""
        if self.fatal is None:
            self.fatal = error
            log.error("%s", error)
            if self.on_fatal is not None:
                self.on_fatal(error)

    # ----- scheduling ---------------------------------------------------------------------
    def _spawn(self, coro: Awaitable[None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except StoreError as e:
                self._fail(e)
            except Exception:
                log.exception("internal error in a channel task")

        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _arm(self, actor: _Actor, slot: str, when: float | None) -> None:
        """(Re)set the actor's `debounce` or `wake` timer to run one turn at `when` (None: off)."""
        old: TimerHandle | None = getattr(actor, slot)
        if old is not None:
            old.cancel()
        setattr(actor, slot, None)
        if when is None:
            return

        def fire() -> None:
            setattr(actor, slot, None)
            actor.queued = True
            self._spawn(self._turn(actor))

        setattr(actor, slot, self.clock.call_at(when, fire))

    def _kick(self, actor: _Actor) -> None:
        """Something happened: decide after the debounce (0: on the clock's next tick).

        Without a debounce, a turn that is armed or queued but has not looked yet covers the
        whole burst, so a busy channel costs one timer per turn rather than one per message.
        """
        delay = actor.debounce_s
        if delay > 0 or not (actor.queued or actor.debounce is not None):
            self._arm(actor, "debounce", self.clock.now() + delay)

    def _schedule_wake(self, actor: _Actor, when: float | None) -> None:
        self._arm(actor, "wake", when)

    async def flush(self) -> None:
        """Run every pending debounced decision now (end of a console script)."""
        for actor in list(self._actors.values()):
            if actor.debounce is not None:
                actor.debounce.cancel()
                actor.debounce = None
                self._spawn(self._turn(actor))
        await self.idle()

    async def idle(self) -> None:
        """Wait until no decision or generation is running.

        On a virtual clock a task sleeping through a retry backoff can only go on when time
        moves, so such tasks count as settled (the caller advances the clock).
        """
        virtual = isinstance(self.clock, VirtualClock)
        while True:
            pending = [t for t in self._tasks if not t.done()]
            if not pending or (virtual and self._clock_waits >= len(pending)):
                break
            await asyncio.wait(pending, timeout=0.01 if virtual else None)
        await asyncio.sleep(0)

    def busy(self) -> bool:
        """Whether a decision or generation is still running."""
        return any(not t.done() for t in self._tasks)

    async def backoff_sleep(self, seconds: float) -> None:
        """The backend's retry wait, on the engine's clock (so tests never wait for real)."""
        self._clock_waits += 1
        try:
            await self.clock.sleep(seconds)
        finally:
            self._clock_waits -= 1

    # ----- decisions ----------------------------------------------------------------------
    async def _candidate(self, actor: _Actor, key: str, recent: list[Line]) -> Candidate:
        state = actor.states.get(key)
        if state is None:
            state = await self._state(actor.channel, key, copy=False)
        blocked = self._stopped(state)
        if blocked is None and self.characters[key].behavior.daily_token_budget > 0:
            blocked = await self._over_budget(key)
        return self._standing(key, state, recent, blocked)

    def _candidate_now(self, actor: _Actor, key: str, recent: list[Line]) -> Candidate | None:
        """`_candidate` when nothing needs the store (state cached, no daily budget); else None."""
        state = actor.states.get(key)
        if state is None or self.characters[key].behavior.daily_token_budget > 0:
            return None
        return self._standing(key, state, recent, self._stopped(state))

    def _standing(
        self, key: str, state: dict[str, Any], recent: list[Line], blocked: str | None
    ) -> Candidate:
        if blocked is None:
            blocked = self._rate_limited(key, state, recent)
        handled = int(state.get("handled_seq", 0))
        answering = state.get("answering")
        if answering is not None and any(
            m[CHARACTER] == key and m[SEQ] > answering for m in recent
        ):
            # the reply was stored but a crash kept its state from being saved
            handled = max(handled, int(answering))
        return Candidate(
            key,
            self._fixed[key].names,
            self._fixed[key].knobs,
            handled,
            state.get("last_spoke_at"),
            int(state.get("continuations", 0)),
            blocked,
        )

    def _stopped(self, state: dict[str, Any]) -> str | None:
        """Hard stops: a fatal backend error, a mute."""
        if self.fatal is not None:
            return f"stopped by an unrecoverable error ({self.fatal})"
        if state.get("muted"):
            return "muted in this channel (/unmute)"
        return None

    def _rate_limited(self, key: str, state: dict[str, Any], recent: list[Line]) -> str | None:
        """The channel and per-user reply rate limits (replies in the last minute)."""
        b = self.characters[key].behavior
        if b.replies_per_minute <= 0 and b.user_replies_per_minute <= 0:
            return None
        now = self.clock.now()
        replies = [r for r in state.get("replies", []) if now - r[0] < 60.0]
        if b.replies_per_minute > 0 and len(replies) >= b.replies_per_minute:
            return f"channel rate limit ({b.replies_per_minute} replies a minute)"
        if b.user_replies_per_minute > 0:
            handled = int(state.get("handled_seq", 0))
            authors = {
                m[AUTHOR_ID]
                for m in recent
                if m[SEQ] > handled and not m[IS_BOT] and m[CHARACTER] is None
            }
            over = {
                a
                for a in authors
                if sum(1 for r in replies if r[1] == a) >= b.user_replies_per_minute
            }
            if authors and over == authors:
                return f"per-user rate limit ({b.user_replies_per_minute} replies a minute)"
        return None

    async def _over_budget(self, key: str) -> str | None:
        """The daily token budget (UTC day), read from the store's usage totals."""
        budget = self.characters[key].behavior.daily_token_budget
        day = _day(self.clock.now())
        used = await self.store.usage(character=key, day=day)
        spent = used.prompt_tokens + used.completion_tokens
        if spent < budget:
            return None
        if (key, day) not in self._budget_warned:
            self._budget_warned.add((key, day))
            log.warning(
                "%s spent its daily token budget (%d of %d); quiet until 00:00 UTC",
                key,
                spent,
                budget,
            )
        return f"daily token budget spent ({spent} of {budget} tokens)"

    def _decides_at_once(self, actor: _Actor) -> bool:
        """No debounce, a real clock and a free channel: decide inside `receive` (no timer or
        task per message); a virtual clock keeps deciding when time moves, as scripts expect."""
        return self._undelayed(actor) and not actor.lock.locked()

    def _undelayed(self, actor: _Actor) -> bool:
        """No debounce, a real clock, and no turn armed or queued."""
        return (
            actor.debounce_s <= 0
            and not self._virtual
            and not actor.queued
            and actor.debounce is None
        )

    async def _turn_at_once(self, actor: _Actor) -> None:
        """`_turn` inside `receive`: a reply, which takes a while, goes on in a task."""
        try:
            # no lock and no wait when memory holds all it needs: nothing else runs meanwhile
            done = self._decide_now(actor)
        except Exception:
            log.exception("internal error in a channel turn")
            return
        if done is not None and done[0].speaker is None:
            self._schedule_wake(actor, done[0].wake_at)
            return
        await actor.lock.acquire()  # free (checked just before): returns at once
        if done is None:
            try:
                done = await self._decide(actor)
            except StoreError as e:
                actor.lock.release()
                self._fail(e)
                return
            except Exception:
                actor.lock.release()
                log.exception("internal error in a channel turn")
                return
            except BaseException:
                actor.lock.release()
                raise
        decision, recent = done
        if decision.speaker is None:
            self._schedule_wake(actor, decision.wake_at)
            actor.lock.release()
            return
        self._spawn(self._carry_out(actor, decision, recent))

    async def _turn(self, actor: _Actor) -> None:
        """One decision for the channel, and the reply it calls for."""
        await actor.lock.acquire()
        actor.queued = False
        try:
            decision, recent = self._decide_now(actor) or await self._decide(actor)
        except BaseException:
            actor.lock.release()
            raise
        await self._carry_out(actor, decision, recent)

    async def _carry_out(self, actor: _Actor, decision: Decision, recent: list[Line]) -> None:
        """Speak if the decision says so, then let go of the channel (the caller locked it).

        After a reply (or a failed one) the channel is looked at again: at once, still holding
        it, when the next turn would have come on the next tick anyway.
        """
        while True:
            spoke = False
            done = None
            try:
                if decision.speaker is not None and decision.mode is not None:
                    spoke = await self._speak(actor, decision.speaker, decision.mode, recent)
                self._schedule_wake(actor, decision.wake_at)
                # others may want to answer it, or still be waiting their turn after a failure
                again = spoke or decision.speaker is not None
                if again and self._undelayed(actor):
                    done = self._decide_now(actor)
            except BaseException:
                actor.lock.release()
                raise
            if done is None:
                actor.lock.release()
                if again:
                    self._kick(actor)
                return
            decision, recent = done

    async def _decide(self, actor: _Actor) -> tuple[Decision, list[Line]]:
        """Look at the channel, pick a speaker or none, record why (the channel is locked)."""
        # `_recent` without a coroutine when memory holds the channel (the usual case)
        recent = self._rows.lookup(actor.channel.key, 0, POLICY_WINDOW)
        if recent is None:
            recent = await self._load(actor, 0, POLICY_WINDOW)
        cands = [await self._candidate(actor, k, recent) for k in actor.present]
        behind = _backlog(recent, cands)
        if behind is not None:
            # a backlog longer than the tail: look back far enough to see every mention
            limit = max(POLICY_WINDOW, self.settings.salon.history_messages)
            recent = await self._history(actor, behind, limit)
        return self._conclude(actor, cands, recent), recent

    def _decide_now(self, actor: _Actor) -> tuple[Decision, list[Line]] | None:
        """`_decide` when memory holds all it needs (the usual case); None when it must wait."""
        recent = self._rows.lookup(actor.channel.key, 0, POLICY_WINDOW)
        if recent is None:
            return None
        cands = []
        for k in actor.present:
            c = self._candidate_now(actor, k, recent)
            if c is None:
                return None
            cands.append(c)
        if _backlog(recent, cands) is not None:
            return None
        return self._conclude(actor, cands, recent), recent

    def _conclude(self, actor: _Actor, cands: list[Candidate], recent: list[Line]) -> Decision:
        """The policy's decision, recorded in the (cached) states of the candidates."""
        decision = decide(
            recent,
            cands,
            direct=actor.channel.direct,
            now=self.clock.now(),
            rng=self.rng,
            loop_limit=self.settings.salon.bot_loop_limit,
        )
        top = recent[-1][SEQ] if recent else 0
        logged = decisions_log.isEnabledFor(logging.INFO)
        for key, why in decision.why.items():
            if logged:
                decisions_log.info("%s %s: %s", actor.channel.key, key, why)
            # changed in place (a busy channel would otherwise leave a dict per message for
            # the collector); the speaker's state is written with its "answering" mark before
            # the model is asked. Every candidate's state is cached by now.
            state = actor.states[key]
            state["last_why"] = why
            if key in decision.handled and key != decision.speaker:
                state["handled_seq"] = max(int(state.get("handled_seq", 0)), top)
            self._defer(actor.channel, key)
        return decision

    # ----- generation ---------------------------------------------------------------------
    async def _transcript(
        self, actor: _Actor, key: str, state: dict[str, Any], memo: P.Rendered
    ) -> tuple[list[Line], int, int, int]:
        """The lines for the prompt, windowed in blocks so consecutive requests share a prefix.

        Returns (lines, window start, how many leading lines `memo` was built from (0: none),
        the window's token estimate).
        """
        limit = max(2, self.settings.salon.history_messages)
        start = int(state.get("window_start", 0))
        rows = await self._history(actor, max(0, start - 1), limit + 1)
        if len(rows) > limit:
            rows = rows[-(limit // 2) :]
            start = rows[0][SEQ]
        reused, tokens = _reused(memo.source, rows, start)
        if reused:
            tokens += sum(r[TOKENS] for r in rows[reused:])
        else:
            tokens = sum(r[TOKENS] for r in rows if r[SEQ] >= start)
        scale = float(state.get("token_scale", 1.0))
        budget = input_limit(self.settings.llm.model, self.settings.llm.input_limit)
        budget -= self._fixed[key].profile_tokens
        budget = max(256, budget)
        if tokens * scale > budget:
            # over budget (an upper bound of the sum below): choose a new start
            sized = [(r[SEQ], int(r[TOKENS] * scale)) for r in rows]
            moved = P.choose_window(sized, start, budget)
            if moved != start:
                start, reused = moved, 0
                tokens = sum(r[TOKENS] for r in rows if r[SEQ] >= start)
        return rows, start, reused, tokens

    def _prompt(
        self,
        key: str,
        rows: list[Line],
        start: int,
        reused: int,
        memo: P.Rendered,
        *,
        direct: bool,
        notes: list[str],
        after: int | None,
    ) -> list[P.Msg]:
        """The request's messages; only lines the memo has not seen are rendered when it can.

        `after`: with long-term memory, only turns after this seq are sent.
        """
        fixed = self._fixed[key]
        persona, reserved = fixed.persona, fixed.reserved
        messages = None
        if reused and after is None:
            messages = P.extend_messages(
                persona,
                [_turn(r, key) for r in rows[reused:]],
                direct=direct,
                supplements=notes,
                reserved_names=reserved,
                memo=memo,
            )
        if messages is None:
            turns = [
                _turn(r, key) for r in rows if r[SEQ] >= start and (after is None or r[SEQ] > after)
            ]
            messages = P.build_messages(
                persona,
                turns,
                direct=direct,
                supplements=notes,
                reserved_names=reserved,
                include_system=after is None,
                memo=memo,
            )
        return messages

    async def _speak(
        self,
        actor: _Actor,
        key: str,
        mode: str,
        recent: list[Line],
        *,
        regen: bool = False,
    ) -> bool:
        ch = self.characters[key]
        channel = actor.channel
        state = await self._state(channel, key)
        meta = await self._state(channel, CHANNEL)
        top = recent[-1][SEQ] if recent else 0
        if regen:
            state["regen_count"] = int(state.get("regen_count", 0)) + 1
        state.pop("answering", None)
        before = dict(state)
        memo = self._memo(channel.key, key)
        # from memory, without a round trip, unless the channel was not cached
        rows, start, reused, window_tokens = await self._transcript(actor, key, state, memo)
        # the mark is stored before the model is asked (a crash after the reply then never
        # answers twice)
        await self._save(channel, key, {**before, "answering": top})
        notes = list(meta.get("notes", []))
        memory = ch.memory.enable_long_term_memory
        after = int(state.get("memory_sent_seq", 0)) if memory else None
        memo.source = None  # a failure half-way must not leave a memo that vouches for itself
        messages = self._prompt(
            key, rows, start, reused, memo, direct=channel.direct, notes=notes, after=after
        )
        if rows:
            memo.source = (rows[0], rows[-1], len(rows), start, window_tokens)
        self._memo_settled(memo)
        params = self._fixed[key].params
        if regen:
            base = params.seed if params.seed is not None else self.rng.randrange(1, 2**31)
            params = replace(params, seed=base + int(state["regen_count"]))
        request = ChatRequest(
            messages=tuple(messages),
            params=params,
            session_id=_session_id(channel.key, key, int(state.get("epoch", 0))),
            character_options=self._memory_options(ch) if memory else None,
            speaker=ch.name,
        )
        addressed = next(
            (
                m
                for m in recent
                if m[SEQ] > int(state.get("handled_seq", 0)) and key in m[ADDRESSED]
            ),
            None,
        )
        state["handled_seq"] = max(int(state.get("handled_seq", 0)), top)
        state["window_start"] = start
        urgent = addressed is not None or channel.direct or regen
        estimated = memo.estimate  # estimate_tokens over every content in `messages`
        texts = await self._generate(
            actor, key, request, state, estimated, priority=0 if urgent else 1
        )
        if notes and texts is not None:
            meta["notes"] = []
            await self._save(channel, CHANNEL, meta)
        if not texts:
            await self._save(channel, key, state)
            return False
        # tuples, not lists: a state dict holding only strings, numbers and tuples of them is
        # dropped from the collector's lists (a thousand channels' states were ~30% of a pass)
        state["candidates"] = tuple(texts[1:])
        reply_to = (
            addressed[MSG_ID] if addressed and mode == "reply" and not channel.direct else None
        )
        posted = await self._post(actor, key, texts[0], reply_to=reply_to)
        now = self.clock.now()
        trigger = addressed[AUTHOR_ID] if addressed else (recent[-1][AUTHOR_ID] if recent else "")
        b = ch.behavior
        if b.replies_per_minute > 0 or b.user_replies_per_minute > 0:
            # (time, author) pairs as tuples, which the collector stops scanning (JSON has lists)
            kept = [(r[0], r[1]) for r in state.get("replies", []) if now - r[0] < 60.0]
            state["replies"] = (*kept, (now, trigger))
        else:
            state.pop("replies", None)  # only the rate limits read it; every flush writes it
        state["last_spoke_at"] = now
        state["continuations"] = int(state.get("continuations", 0)) + 1 if mode == "continue" else 0
        state["last_posted"] = tuple(posted)
        if memory:
            state["memory_sent_seq"] = await self._last_seq(channel)
        # deferred: the stored answering mark and the stored reply already say what was answered
        actor.states[key] = state
        self._defer(channel, key)
        return True

    async def _generate(
        self,
        actor: _Actor,
        key: str,
        request: ChatRequest,
        state: dict[str, Any],
        estimated: int,
        *,
        priority: int = 0,
    ) -> list[str] | None:
        """Ask the model (typing shown meanwhile); None on a fault, [] when nothing is usable."""
        sender = actor.senders[key]
        typing = asyncio.get_running_loop().create_task(self._keep_typing(sender, actor.channel))
        try:
            async with self._model_slots.hold(priority):
                result = await self.backend.complete(request)
        except AuthError as e:
            self._fail(e)
            return None
        except ModerationError as e:
            log.warning(
                "%s in %s: content moderation refused the reply; staying silent (%s)",
                key,
                actor.channel.key,
                e,
            )
            return None
        except BackendError as e:
            log.warning("%s in %s: gave up on this reply: %s", key, actor.channel.key, e)
            return None
        finally:
            # not waited for: it ends at its next step, before anything it could send, and a
            # reply should not wait a loop turn for that (idle() and aclose() still see it)
            if typing.cancel():
                self._tasks.add(typing)
                typing.add_done_callback(self._tasks.discard)
        # not waited for: the reply need not wait a commit for bookkeeping; it is written with
        # (or just before) the reply's own line, and later reads of the totals come after it
        self._spawn(
            self.store.add_usage(
                actor.channel,
                key,
                _day(self.clock.now()),
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                cached_tokens=result.cached_tokens,
            )
        )
        if result.prompt_tokens > 0 and estimated > 0:
            old = float(state.get("token_scale", 1.0))
            state["token_scale"] = round(0.5 * old + 0.5 * (result.prompt_tokens / estimated), 4)
        own = self._fixed[key].names
        others: tuple[str, ...] = ()
        if any(":" in c or "：" in c for c in result.candidates):  # else no "Name:" to look at
            others = self._other_names(await self._recent(actor), key)
        texts = [t for t in (clean_reply(c, own, others) for c in result.candidates) if t]
        if not texts:
            log.warning(
                "%s in %s: the model's reply was empty after cleaning; staying silent",
                key,
                actor.channel.key,
            )
        return texts

    def _memo(self, channel_key: str, key: str) -> P.Rendered:
        """The channel's last rendered prompt for `key` (most recently used last)."""
        memo = self._memos.pop((channel_key, key), None)
        if memo is None:
            memo = P.Rendered()
        else:
            self._memo_bytes -= memo.size
        self._memos[(channel_key, key)] = memo
        return memo

    def _memo_settled(self, memo: P.Rendered) -> None:
        """Count the memo's new size; drop the least recently used past the budget."""
        self._memo_bytes += memo.size
        while self._memo_bytes > self._memo_budget and len(self._memos) > 1:
            oldest = next(iter(self._memos))
            self._memo_bytes -= self._memos.pop(oldest).size

    def _other_names(self, rows: list[Line], key: str) -> tuple[str, ...]:
        names = {r[AUTHOR_NAME] for r in rows if r[CHARACTER] != key}
        names.update(c.name for k, c in self.characters.items() if k != key)
        return tuple(sorted(names))

    async def _keep_typing(self, sender: Sender, channel: Channel) -> None:
        while True:
            try:
                await sender.typing(channel)
            except Exception as e:  # typing is cosmetic; never let it break a reply
                log.debug("typing failed: %s", e)
            await self.clock.sleep(TYPING_EVERY_S)

    async def _post(self, actor: _Actor, key: str, text: str, *, reply_to: str | None) -> list[str]:
        """Send a reply in pieces that fit the platform, storing each piece as it is sent."""
        sender = actor.senders[key]
        author = self._author(key, actor.channel.platform)
        ids: list[str] = []
        for i, piece in enumerate(split_message(text, sender.max_length)):
            sent = await sender.send(Outgoing(actor.channel, piece, reply_to if i == 0 else None))
            await self._store_message(
                actor, Message(actor.channel, sent.id, author, piece, sent.at)
            )
            ids.append(sent.id)
        return ids

    @staticmethod
    def _memory_options(ch: Character) -> dict[str, Any]:
        return {
            "profile": ch.profile,
            "memory": {
                "enable_long_term_memory": True,
                "memory_entries": ch.memory.memory_entries,
                "skip_save_types": list(ch.memory.skip_save_types),
            },
        }

    async def _last_seq(self, channel: Channel) -> int:
        last = await self.store.last_message(channel)
        return last.seq if last else 0

    # ----- commands -----------------------------------------------------------------------
    async def add_note(self, channel: Channel, text: str, *, via: str, sender: Sender) -> None:
        """One-off supplementary info for the next reply here (the seed's system insert)."""
        await self._actor(channel, via, sender)
        meta = await self._state(channel, CHANNEL)
        meta["notes"] = [*meta.get("notes", []), text]
        await self._save(channel, CHANNEL, meta)

    async def command(
        self,
        channel: Channel,
        name: str,
        args: str = "",
        *,
        via: str,
        sender: Sender,
        user: Participant | None = None,
    ) -> CommandResult:
        """Chat commands; the adapter has already checked who may run the state-changing ones."""
        actor = await self._actor(channel, via, sender)
        ch = self.characters[via]
        if name == "help":
            return CommandResult(HELP)
        if name == "why":
            state = await self._state(channel, via)
            return CommandResult(f"{ch.name}: {state.get('last_why', 'no decision yet')}")
        if name == "stats":
            return CommandResult(await self._stats(channel, via))
        if name in ("mute", "unmute"):
            async with actor.lock:
                state = await self._state(channel, via)
                state["muted"] = name == "mute"
                await self._save(channel, via, state)
            return CommandResult(f"{ch.name} is {'muted' if name == 'mute' else 'unmuted'} here.")
        if name == "reset":
            async with actor.lock:
                state = await self._state(channel, via)
                last = await self._last_seq(channel)
                state.update(
                    window_start=last + 1,
                    handled_seq=last,
                    continuations=0,
                    epoch=int(state.get("epoch", 0)) + 1,
                    candidates=[],
                    memory_sent_seq=last,
                    last_posted=[],
                )
                await self._save(channel, via, state)
            self._schedule_wake(actor, None)
            return CommandResult(f"{ch.name} starts over: earlier messages are forgotten here.")
        if name == "regen":
            return await self._regen(actor, via)
        return CommandResult(f"unknown command /{name}; try /help", ok=False)

    async def _regen(self, actor: _Actor, key: str) -> CommandResult:
        ch = self.characters[key]
        async with actor.lock:
            state = await self._state(actor.channel, key)
            posted = list(state.get("last_posted", []))
            if not posted:
                return CommandResult(f"{ch.name} has no reply here to replace.", ok=False)
            for msg_id in posted:
                await self.store.delete_message(actor.channel, msg_id)
            self._rows.invalidate(actor.channel.key)
            candidates = list(state.get("candidates", []))
            if candidates:
                text = candidates.pop(0)
                state["candidates"] = candidates
                state["last_posted"] = await self._post(actor, key, text, reply_to=None)
                await self._save(actor.channel, key, state)
                return CommandResult(f"{ch.name}: posted another candidate.")
            await self._save(actor.channel, key, state)
            recent = await self._recent(actor)
            spoke = await self._speak(actor, key, "reply", recent, regen=True)
        return CommandResult(
            f"{ch.name}: regenerated."
            if spoke
            else f"{ch.name}: regeneration failed; see the log.",
            ok=spoke,
        )

    async def _stats(self, channel: Channel, key: str) -> str:
        model = self.settings.llm.model
        here = await self.store.usage(character=key, channel=channel)
        today = await self.store.usage(character=key, day=_day(self.clock.now()))
        total = await self.store.usage(character=key)
        lines = [f"{self.characters[key].name} ({model})"]
        for label, u in (("here", here), ("today", today), ("all time", total)):
            cost = estimated_cost(model, u.prompt_tokens, u.completion_tokens)
            money = f", ≤ ¥{cost:.4f}" if cost is not None else ""
            lines.append(
                f"{label}: {u.requests} requests, {u.prompt_tokens} prompt tokens "
                f"({u.cached_tokens} cached), {u.completion_tokens} completion tokens{money}"
            )
        budget = self.characters[key].behavior.daily_token_budget
        if budget > 0:
            spent = today.prompt_tokens + today.completion_tokens
            state = "spent — staying quiet" if spent >= budget else "left"
            lines.append(f"daily budget: {spent} of {budget} tokens ({state})")
        return "\n".join(lines)

    async def aclose(self) -> None:
        with contextlib.suppress(StoreError):
            await self.flush_state()
        for actor in self._actors.values():
            for timer in (actor.debounce, actor.wake):
                if timer is not None:
                    timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)


@contextlib.asynccontextmanager
async def build_engine(
    settings: Settings,
    characters: Mapping[str, Character] | list[Character],
    *,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    backend: Backend | None = None,
    store: Store | None = None,
) -> AsyncIterator[Engine]:
    """Open the store and the model backend the settings describe, and close them afterwards."""
    from core.backends import make_backend
    from core.errors import StartupError
    from core.sqlite_store import SqliteStore

    chars = {c.key: c for c in characters} if isinstance(characters, list) else dict(characters)
    clock = clock or RealClock()
    own_store = store is None
    own_backend = backend is None
    if backend is None and settings.llm.provider == "dashscope" and not settings.api_key():
        raise StartupError(
            f"the environment variable {settings.llm.api_key_env} is not set; export your "
            "DashScope API key there (or set [llm] api_key_env to the variable that holds it)"
        )
    if store is None:
        store = SqliteStore(settings.storage_path())
    await store.open()
    engine_ref: list[Engine] = []

    async def backoff(seconds: float) -> None:
        await engine_ref[0].backoff_sleep(seconds)

    if backend is None:
        llm = settings.llm
        backend = make_backend(
            provider=llm.provider,
            base_url=llm.base_url,
            api_key=settings.api_key(),
            model=llm.model,
            prefill=llm.prefill,
            timeout_s=llm.timeout_s,
            max_retries=llm.max_retries,
            stream=llm.stream,
            sleep=backoff,
            rng=random.Random(rng.random() if rng else None),
        )
    engine = Engine(
        settings=settings, characters=chars, store=store, backend=backend, clock=clock, rng=rng
    )
    engine_ref.append(engine)
    try:
        yield engine
    finally:
        await engine.aclose()
        if own_backend:
            await backend.aclose()
        if own_store:
            await store.close()
