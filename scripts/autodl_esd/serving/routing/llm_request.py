"""What the gateway reads of an OpenAI-style request body: the model it names (routing by
model) and the affinity key (`cache_aware`).

The body is parsed once, from the bytes as received, and forwarded unchanged (never
re-serialised). Only JSON objects are read; anything else has no model and no key.

The affinity key is what a replica's prefix cache would recognise again:

- the `X-Session-ID` request header when the client sends one (its value, whole);
- chat (`messages`): the messages up to and including the first `user` message (the system
  prompt and the opening question), the first `AFFINITY_PREFIX_CHARS` characters of each.
  Every later turn of the conversation repeats them, so every turn gets the same key;
- completions (`prompt`): its first `AFFINITY_PREFIX_CHARS` characters (a list of prompts:
  the first one). A conversation kept in one prompt string gets one key from the turn whose
  prompt is that long; shorter first turns key on the whole (still growing) prompt.

Otherwise there is no key and the policy routes by load alone. The key is a 64-bit hash
(blake2b), the same in every gateway, so gateways sharing a registry agree.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

# Characters of each leading message (or of the prompt) that make the key: enough to tell
# conversations apart by their opening question, few enough that hashing costs microseconds.
AFFINITY_PREFIX_CHARS = 1024
SESSION_HEADER = "X-Session-ID"


@dataclass(frozen=True)
class LlmRequest:
    model: str | None  # the body's top-level "model" when it is a string
    affinity_text: str | None  # what the affinity key hashes (None: no prompt or messages)


NOT_JSON = LlmRequest(None, None)


def parse_body(body: bytes) -> LlmRequest:
    """The model and the affinity text of a JSON request body (NOT_JSON when it is not one)."""
    if not body or body.lstrip()[:1] != b"{":
        return NOT_JSON
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, bad UTF-8, or absurdly nested
        return NOT_JSON
    if not isinstance(document, dict):
        return NOT_JSON
    model = document.get("model")
    return LlmRequest(model if isinstance(model, str) else None, _affinity_text(document))


def _affinity_text(document: dict[str, Any]) -> str | None:
    messages = document.get("messages")
    if isinstance(messages, list) and messages:
        parts = []
        for message in messages:
            if not isinstance(message, dict):
                break
            role = message.get("role")
            parts.append(f"{role}\x00{_text(message.get('content'))[:AFFINITY_PREFIX_CHARS]}")
            if role == "user":
                break
        return "\x01".join(parts) if parts else None
    prompt = document.get("prompt")
    if isinstance(prompt, list) and prompt:
        prompt = prompt[0]
    if isinstance(prompt, (str, list)) and prompt:
        return _text(prompt)[:AFFINITY_PREFIX_CHARS]
    return None


def _text(content: Any) -> str:
    """A message's content as text: a string as is, anything else (parts, token ids) as
    canonical JSON, so the same content always gives the same text."""
    if isinstance(content, str):
        return content
    try:
        return json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:  # NaN or Infinity (json.loads accepts them): still the same text every time
        return repr(content)


def affinity_key(session: str | None, request: LlmRequest | None) -> int | None:
    """The 64-bit key a request is routed by, or None (no session header, no prompt)."""
    if session:
        text = "session\x00" + session
    elif request is not None and request.affinity_text is not None:
        text = "prompt\x00" + request.affinity_text
    else:
        return None
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")
