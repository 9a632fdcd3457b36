"""The simulated model server's cost model: prompt tokens, its prefix cache, its delays.

- Tokens: the prompt text cut into chunks of CHARS_PER_TOKEN characters (about an English
  token; a chat is first rendered as `<|role|>content<|end|>` per message, then
  `<|assistant|>`, so a conversation's next turn starts with the previous prompt). A
  completions prompt given as token ids is taken as those tokens.
- Prefix cache, after vLLM's automatic prefix caching: the tokens are cut into blocks of
  `cache_block_tokens`; a block's key hashes the previous block's key with its own tokens,
  so one key names the whole prefix up to there. A container keeps the `prefix_cache_blocks`
  keys it used most recently (LRU). A request's cached tokens are its leading blocks found
  there, at most the prompt minus one token (the last is always computed, as in vLLM); only
  full prompt blocks are kept (not the generated ones), from the moment the request starts.
- Delays: time to first token = `ttft_seconds` + `prefill_seconds_per_token` x the tokens
  not cached; each further token takes `decode_seconds_per_token`. Unset, the fixed part and
  the per-token step are the machine's `latency_seconds` and prefill costs nothing: one
  token every latency, as before the cache was modelled.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from .cluster import Machine

CHARS_PER_TOKEN = 4


def chat_text(messages: Any) -> str:
    """A chat rendered as one prompt text (the template is fixed and documented above)."""
    if not isinstance(messages, list):
        return ""
    parts = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        parts.append(f"<|{message.get('role', '')}|>{_content_text(message.get('content'))}<|end|>")
    return "".join(parts) + "<|assistant|>"


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return "".join(part.get("text", "") for part in content if isinstance(part, dict)
                       and isinstance(part.get("text", ""), str))
    return ""


def prompt_tokens(params: dict, chat: bool) -> list:
    """The request's prompt as tokens (see the module docstring)."""
    if chat:
        text = chat_text(params.get("messages"))
    else:
        prompt = params.get("prompt", "")
        if isinstance(prompt, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in prompt):
            return list(prompt)
        if isinstance(prompt, list):
            text = "".join(x for x in prompt if isinstance(x, str))
        else:
            text = prompt if isinstance(prompt, str) else ""
    return [text[i:i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)]


@dataclass(frozen=True)
class Timing:
    """A machine's model-server delays, in real seconds."""

    ttft_seconds: float
    prefill_seconds_per_token: float
    decode_seconds_per_token: float

    @classmethod
    def of(cls, machine: Machine) -> "Timing":
        latency = machine.latency_seconds
        return cls(
            ttft_seconds=latency if machine.ttft_seconds is None else machine.ttft_seconds,
            prefill_seconds_per_token=machine.prefill_seconds_per_token,
            decode_seconds_per_token=latency if machine.decode_seconds_per_token is None
            else machine.decode_seconds_per_token,
        )

    def first_token_seconds(self, prompt_tokens: int, cached_tokens: int) -> float:
        return self.ttft_seconds + self.prefill_seconds_per_token * (prompt_tokens - cached_tokens)


class PrefixCache:
    """One container's cache of prompt blocks (LRU) and its hit counters; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self.requests = 0
        self.prompt_tokens = 0  # queried tokens, like vllm:prefix_cache_queries
        self.cached_tokens = 0  # of which found cached, like vllm:prefix_cache_hits

    def admit(self, tokens: list, block_tokens: int, capacity_blocks: int) -> int:
        """Look the prompt up, then keep its full blocks; returns its cached tokens."""
        keys, parent = [], 0
        for start in range(0, len(tokens) - block_tokens + 1, block_tokens):
            parent = hash((parent, tuple(tokens[start:start + block_tokens])))
            keys.append(parent)
        with self._lock:
            hits = 0
            for key in keys:
                if key not in self._blocks:
                    break
                hits += 1
            # Deepest first, so the prefix's root is the most recent: eviction takes a
            # conversation's tail before the blocks every later turn starts with (as vLLM).
            for key in reversed(keys):
                self._blocks[key] = None
                self._blocks.move_to_end(key)
            while len(self._blocks) > capacity_blocks:
                self._blocks.popitem(last=False)
            cached = max(0, min(hits * block_tokens, len(tokens) - 1))
            self.requests += 1
            self.prompt_tokens += len(tokens)
            self.cached_tokens += cached
            return cached

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "prompt_tokens": self.prompt_tokens,
                "cached_tokens": self.cached_tokens,
                "hit_rate": round(self.cached_tokens / self.prompt_tokens, 4) if self.prompt_tokens else 0.0,
                "cached_blocks": len(self._blocks),
            }
