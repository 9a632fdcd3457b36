"""Token timing of a streamed LLM answer, as the gateway forwards it: time to first token and
time per output token, for the `gen_ai_server_*` histograms (metrics.py).

The gateway does not tokenize. It counts server-sent events: every `data:` line is one
event, and an OpenAI-style stream (vLLM, the simulator) sends one event per generated token,
so events stand in for tokens; `data: [DONE]` is not one. The approximation: an engine that
packs several tokens into one event (or a role-only first chunk) is counted per event, and
events that reach the gateway in one network read share its timestamp.

- time to first token: from the request's arrival at the gateway (its queue and retries
  included, what the client waits) to the first event forwarded;
- time per output token: (last event - first event) / (events - 1), for two events or more.
"""

from __future__ import annotations

EVENT = b"\ndata:"
DONE = b"\ndata: [DONE]"
# Bytes of the previous read kept in front of the next one, so a marker split across two
# reads is still seen: one byte less than the longest marker, so none is counted twice.
CARRY = len(DONE) - 1


class SseClock:
    """Feed it each chunk as it is forwarded; read first_at, last_at and events after."""

    __slots__ = ("events", "first_at", "last_at", "_carry")

    def __init__(self) -> None:
        self.events = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self._carry = b"\n"  # the stream starts at the beginning of a line

    def feed(self, chunk: bytes, now: float) -> None:
        window = self._carry + chunk
        # A marker found must end inside `chunk`: the carry alone is too short to hold one
        # (CARRY < len(DONE)) but it can hold an EVENT, so that count uses a shorter carry.
        events = (self._carry[-(len(EVENT) - 1):] + chunk).count(EVENT) - window.count(DONE)
        self._carry = window[-CARRY:]
        # Negative when the [DONE] line was split after its `data:`, already counted as an event.
        self.events += events
        if events > 0:
            if self.first_at is None:
                self.first_at = now
            self.last_at = now

    def time_to_first_token(self, started: float) -> float | None:
        return None if self.first_at is None else max(0.0, self.first_at - started)

    def time_per_output_token(self) -> float | None:
        if self.events < 2 or self.first_at is None or self.last_at is None:
            return None
        return max(0.0, self.last_at - self.first_at) / (self.events - 1)
