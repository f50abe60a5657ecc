"""A line-fed Server-Sent Events decoder, pure so both protocols' streams share it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str
    data: str


class SseDecoder:
    """Collects `event:`/`data:` fields until a blank line; ignores comments and ids."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> SseEvent | None:
        if line == "":
            return self.flush()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None

    def flush(self) -> SseEvent | None:
        """Dispatch what is pending (also called when the stream ends without a blank line)."""
        if not self._data:
            self._event = ""
            return None
        event = SseEvent(self._event, "\n".join(self._data))
        self._event = ""
        self._data = []
        return event
