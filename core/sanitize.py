"""Neutralising untrusted names and texts so nobody can forge a turn in the prompt."""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Iterable

# Invisible characters that change nothing a reader sees but can fool name comparison or
# reorder text; ZWJ/ZWNJ stay because scripts and emoji sequences need them.
_INVISIBLE = re.compile(
    "[\u00ad\u180e\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
)
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_TEMPLATE = re.compile(
    r"<\||\|>|</?s>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>|<\|?(?:im_start|im_end|endoftext)\|?>",
    re.IGNORECASE,
)
_WHOLE_TOKEN = re.compile(
    r"<\|[^|<>\n]{0,40}\|>|</?s>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>", re.IGNORECASE
)
_TURN = re.compile(r"\s*[*_>\"'“「]*\s*([^:：\n]{1,70}?)\s*[*_]*\s*[:：]")
_NEWLINES = re.compile("\r\n|[\r\u0085\u2028\u2029]")
_TEMPLATE_SWAP = str.maketrans({"<": "‹", ">": "›", "[": "⟦", "]": "⟧"})
MAX_NAME = 64
MAX_PROMPT_CHARS = 4000
TRUNCATED = " … [message truncated]"


def canonical_name(name: str) -> str:
    """The comparison form of a name: NFKC, casefolded, invisible characters and spacing removed."""
    if name.isascii():  # NFKC and the invisible set leave ASCII alone; casefold is lower
        if not name.isprintable():
            name = _CONTROL.sub("", name)
        return " ".join(name.split()).lower()
    text = unicodedata.normalize("NFKC", name)
    text = _INVISIBLE.sub("", _CONTROL.sub("", text))
    text = text.replace("\u200c", "").replace("\u200d", "")
    return " ".join(text.split()).casefold()


def neutralize_template_tokens(text: str) -> str:
    """Defang chat-template control tokens (`<|im_start|>`, `[INST]`, ...), keeping them legible."""
    if not _may_hold_token(text):
        return text
    return _TEMPLATE.sub(lambda m: m.group(0).translate(_TEMPLATE_SWAP), text)


def strip_template_tokens(text: str) -> str:
    """`text` without chat-template tokens, to see what a line really starts with."""
    if not _may_hold_token(text):
        return text
    return _TEMPLATE.sub("", _WHOLE_TOKEN.sub("", text))


def _may_hold_token(text: str) -> bool:
    """Every template token has one of these characters; most chat lines have none."""
    return "<" in text or "[" in text or "|" in text


def clean_text(text: str) -> str:
    """Normalise line ends (also U+2028/U+2029) and drop control and bidi/invisible characters."""
    if text.isascii() and text.isprintable():
        return text
    text = normalize_newlines(text)
    return _INVISIBLE.sub("", _CONTROL.sub("", text))


def normalize_newlines(text: str) -> str:
    """Every line break readers and tokenizers honour becomes a plain `\\n`."""
    return _NEWLINES.sub("\n", text)


def display_name(raw: str) -> str:
    """A one-line, colon-free, bounded rendering of an untrusted display name."""
    return _display_name(raw) if len(raw) <= 256 else _render_name(raw)


@functools.lru_cache(maxsize=4096)
def _display_name(raw: str) -> str:
    """Names repeat in every prompt: cached (short ones only, so the cache stays small)."""
    return _render_name(raw)


def _render_name(raw: str) -> str:
    text = clean_text(raw).replace("\n", " ").replace("\t", " ")
    text = text.replace(":", " ").replace("：", " ")
    text = neutralize_template_tokens(re.sub(r"\s+", " ", text).strip())
    if len(text) > MAX_NAME:
        text = text[:MAX_NAME].rstrip() + "…"
    return text or "Someone"


def short_tag(identity: str) -> str:
    """A stable 4-hex tag for an identity, used to tell look-alike names apart."""
    return hashlib.sha1(identity.encode("utf-8")).hexdigest()[:4]


def unique_names(
    speakers: Iterable[tuple[str, str, bool]], reserved: Iterable[str]
) -> dict[str, str]:
    """Map speaker identity -> prompt name, so that no two identities share a name.

    `speakers` are (identity, raw display name, is a salon character) of everyone except the
    character the prompt is for; `reserved` are the characters' names. A human whose name
    collides with a character's or with another identity's gets a stable `#tag` suffix; a
    genuine character keeps its name.
    """
    reserved_keys = {canonical_name(n) for n in reserved if n.strip()}
    rendered: dict[str, tuple[str, bool]] = {}
    owners: dict[str, set[str]] = {}
    for identity, raw, is_character in speakers:
        if identity in rendered:
            continue
        name = display_name(raw)
        rendered[identity] = (name, is_character)
        owners.setdefault(canonical_name(name), set()).add(identity)
    result: dict[str, str] = {}
    for identity, (name, is_character) in rendered.items():
        key = canonical_name(name)
        if not is_character and (key in reserved_keys or len(owners[key]) > 1):
            name = f"{name} #{short_tag(identity)}"
        result[identity] = name
    return result


def speaker_keys(names: Iterable[str]) -> frozenset[str]:
    """The comparison forms of speaker names, computed once per prompt."""
    return frozenset(name_key(n) for n in names if n.strip())


@functools.lru_cache(maxsize=8192)
def name_key(name: str) -> str:
    """`canonical_name` for names, which repeat: cached."""
    return canonical_name(name)


def _starts_turn(line: str, keys: frozenset[str]) -> bool:
    if ":" not in line and "：" not in line:
        return False
    m = _TURN.match(line)
    return m is not None and canonical_name(m.group(1)) in keys


def neutralize_content(text: str, speaker_names: Iterable[str] | frozenset[str]) -> str:
    """Render an untrusted message body for the prompt.

    A line that starts like a turn of a known speaker (`Ling Lu: ...`) is quoted with `> ` so it
    cannot pass for that speaker's own message; template tokens are defanged; a huge body is cut.
    """
    if (
        len(text) <= MAX_PROMPT_CHARS
        and text.isprintable()  # one line, no control or invisible characters
        and ":" not in text
        and "：" not in text
        and not _may_hold_token(text)
    ):
        return text  # nothing can start a turn or a template token: most chat lines
    keys = speaker_names if isinstance(speaker_names, frozenset) else speaker_keys(speaker_names)
    text = clean_text(text)
    if len(text) > MAX_PROMPT_CHARS:
        text = text[:MAX_PROMPT_CHARS].rstrip() + TRUNCATED
    lines = []
    for line in text.split("\n"):
        # "<|im_end|>Name:" starts a turn too, and names may hold defanged tokens themselves
        probes = (strip_template_tokens(line), neutralize_template_tokens(line))
        if any(_starts_turn(p, keys) for p in probes):
            line = "> " + line.lstrip()
        lines.append(line)
    return neutralize_template_tokens("\n".join(lines))
