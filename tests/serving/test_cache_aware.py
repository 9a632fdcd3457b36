"""cache_aware: the affinity key of a request (session header, leading messages, prompt), the
same key on the same replica, spilling under load, only a leaving or joining replica's keys
moving, and gateways that agree without talking to each other. The end-to-end case with two
gateway processes sharing Redis is in test_redis_registry.py."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import pytest

from helpers.loop_thread import item


def key_of(body: dict | bytes, session: str | None = None) -> int | None:
    from autodl_esd.serving.routing.llm_request import affinity_key, parse_body

    return affinity_key(session, parse_body(body if isinstance(body, bytes) else json.dumps(body).encode()))


def chat(*turns: str, system: str = "你是一个助手。") -> dict:
    messages = [{"role": "system", "content": system}]
    for index, text in enumerate(turns):
        messages.append({"role": "user" if index % 2 == 0 else "assistant", "content": text})
    return {"model": "m", "messages": messages}


def test_every_turn_of_a_conversation_has_the_key_of_its_opening():
    first = key_of(chat("把这段话翻译成英文: 你好"))
    assert first is not None
    assert key_of(chat("把这段话翻译成英文: 你好", "Hello", "再翻译成法语")) == first
    assert key_of(chat("把这段话翻译成英文: 再见")) != first  # another conversation
    assert key_of(chat("把这段话翻译成英文: 你好", system="另一个系统提示")) != first
    # Only the first AFFINITY_PREFIX_CHARS of each leading message count.
    from autodl_esd.serving.routing.llm_request import AFFINITY_PREFIX_CHARS

    long = "x" * AFFINITY_PREFIX_CHARS
    assert key_of(chat(long + "a")) == key_of(chat(long + "b")) != key_of(chat("y" + long))


def test_the_session_header_wins_and_prompts_key_on_their_beginning():
    from autodl_esd.serving.routing.llm_request import AFFINITY_PREFIX_CHARS

    assert key_of(chat("a"), session="s-1") == key_of(chat("b"), session="s-1") != key_of(chat("a"), session="s-2")
    assert key_of(b"not json", session="s-1") == key_of(chat("a"), session="s-1")
    prompt = "p" * AFFINITY_PREFIX_CHARS
    assert key_of({"prompt": prompt + " turn 1"}) == key_of({"prompt": [prompt + " turn 2"]})
    assert key_of({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}) is not None
    for nothing in (b"", b"not json", b"[1, 2]", b'{"model": "m"}', b'{"messages": []}', b'{"prompt": ""}'):
        assert key_of(nothing) is None, nothing


@dataclass
class R:
    container_uuid: str
    inflight: int = 0
    remote_inflight: int = 0


def policy(seed: int = 1, **kwargs):
    from autodl_esd.serving.routing.policies import CacheAware

    return CacheAware(random.Random(seed), **kwargs)


_KEYS_RNG = random.Random(7)
KEYS = [_KEYS_RNG.getrandbits(64) for _ in range(2000)]


def homes(chooser, replicas) -> dict[int, str]:
    return {key: chooser.select(replicas, key).container_uuid for key in KEYS}


def test_the_same_key_goes_to_the_same_replica_and_keys_spread_over_all():
    replicas = [R(f"ctr-{i}") for i in range(4)]
    chooser = policy()
    placed = homes(chooser, replicas)
    assert homes(chooser, replicas) == placed  # idle replicas: every key at home, every time
    shares = [list(placed.values()).count(r.container_uuid) / len(KEYS) for r in replicas]
    assert min(shares) > 0.15 and max(shares) < 0.35  # about a quarter each


def test_gateways_with_their_own_random_state_agree():
    replicas = [R(f"ctr-{i}") for i in range(5)]
    assert homes(policy(seed=1), replicas) == homes(policy(seed=99), list(reversed(replicas)))


def test_a_replica_leaving_or_joining_moves_only_its_own_keys():
    replicas = [R(f"ctr-{i}") for i in range(5)]
    before = homes(policy(), replicas)
    after = homes(policy(), replicas[:2] + replicas[3:])  # ctr-2 leaves
    moved = {key for key in KEYS if before[key] != after[key]}
    assert moved == {key for key in KEYS if before[key] == "ctr-2"}
    joined = homes(policy(), replicas + [R("ctr-new")])
    assert all(joined[key] in (before[key], "ctr-new") for key in KEYS)
    assert 0.1 < sum(joined[key] == "ctr-new" for key in KEYS) / len(KEYS) < 0.25  # about a sixth


def test_a_key_spills_to_the_least_loaded_replica_past_the_bound():
    replicas = [R(f"ctr-{i}") for i in range(4)]
    chooser = policy(balance_factor=1.25)
    key = KEYS[0]
    home = chooser.select(replicas, key)
    others = [r for r in replicas if r is not home]
    home.inflight = 1  # one above the idle ones: within the slack, it stays home
    assert chooser.select(replicas, key) is home
    home.inflight = 3  # total 5, mean after this request 1.5: ceil(1.25 * 1.5) = 2 < 4, and 3 above the least loaded
    others[0].inflight, others[1].inflight = 1, 1
    spilled = chooser.select(replicas, key)
    assert spilled is others[2] and chooser.spills == 1
    for other in others:
        other.inflight = 2  # everyone nearly as busy: mean after 2.5, ceil(1.25 * 2.5) = 4: home again
    assert chooser.select(replicas, key) is home
    home.remote_inflight = 5  # other gateways' requests count too
    assert chooser.select(replicas, key) is not home


def test_a_balance_factor_below_one_is_refused():
    with pytest.raises(ValueError):
        policy(balance_factor=0.9)


# ---- through the gateway -----------------------------------------------------------------


def test_the_gateway_keeps_a_session_and_a_conversation_on_one_replica(loop_thread):
    import requests
    from aiohttp import web

    from autodl_esd.serving.routing.sources import StaticSource

    async def answer(request):
        await request.read()
        return web.json_response({})

    source = StaticSource([item(f"ctr-{i}", loop_thread.upstream(answer)) for i in range(4)])
    gateways = [loop_thread.gateway(source, policy="cache_aware", seed=seed) for seed in (1, 2)]

    def served(gateway, body, headers=None):
        return requests.post(gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=5).headers["X-Served-By"]

    for conversation in range(12):
        opening = f"第 {conversation} 个问题"
        history = [opening, "回答", "追问", "回答", "再问"]
        # Turn by turn, the history grows; the turns alternate between the two gateways.
        turns = [served(gateways[turn % 2], chat(*history[:2 * turn + 1])) for turn in range(3)]
        assert len(set(turns)) == 1, (conversation, turns)
        by_session = {served(gateways[turn % 2], {"model": "m", "prompt": str(turn)}, {"X-Session-ID": f"s-{conversation}"})
                      for turn in range(3)}
        assert len(by_session) == 1
    status = gateways[0].status()
    assert status["policy"] == "cache_aware" and status["policy_state"] == {"balance_factor": 1.25, "spilled_requests": 0}
