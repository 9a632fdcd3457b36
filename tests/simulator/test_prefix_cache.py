"""The simulated model server's prefix cache and delays (issue 24, item 3).

The cost model (simulator/llm.py) is tested on its own: tokens, cache hits, LRU eviction and
the delays it computes. Over HTTP only the reported fields are checked (usage, /metrics,
/_sim/prefix_cache) on machines whose timing is zero: no test measures wall time.
"""

from __future__ import annotations

import json

import pytest
import requests

from simulator import Simulator
from simulator.cluster import ClusterConfigError, Machine
from simulator.llm import CHARS_PER_TOKEN, PrefixCache, Timing, chat_text, prompt_tokens

TOKEN = "sim-token"
IMAGE = "image-0a1b2c3d4e"
TEN_BLOCKS = "x" * (CHARS_PER_TOKEN * 16 * 10)  # 160 tokens: ten blocks of 16


def machine(**settings) -> Machine:
    return Machine(machine_id="0a0a0a0a0a", region="westDC2", gpu_name="RTX 4090", gpu_num=1, cpu_num=8,
                   memory_gb=32, price=1000, max_cuda=124, **settings)


def tokens(count: int, fill: str = "a") -> list[str]:
    return [fill * CHARS_PER_TOKEN] * count


# ----- tokens ------------------------------------------------------------------------------------

def test_a_prompt_is_cut_into_four_character_tokens_and_token_ids_are_taken_as_given():
    assert prompt_tokens({"prompt": "abcdefghij"}, chat=False) == ["abcd", "efgh", "ij"]
    assert prompt_tokens({"prompt": [5, 7, 9]}, chat=False) == [5, 7, 9]
    assert prompt_tokens({"prompt": ["ab", "cd"]}, chat=False) == ["abcd"]
    assert prompt_tokens({}, chat=False) == []


def test_a_chats_next_turn_starts_with_the_previous_turns_prompt():
    first = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    second = first + [{"role": "assistant", "content": " tok0 tok1"},
                      {"role": "user", "content": [{"type": "text", "text": "more"}]}]
    assert chat_text(first) == "<|system|>be brief<|end|><|user|>hello<|end|><|assistant|>"
    assert chat_text(second).startswith(chat_text(first))
    assert "more" in chat_text(second)


# ----- the cache ---------------------------------------------------------------------------------

def test_a_repeated_prompt_hits_its_full_blocks_but_never_the_last_token():
    cache = PrefixCache()
    prompt = tokens(40)  # two full blocks of 16 and a partial one
    assert cache.admit(prompt, 16, 100) == 0
    assert cache.admit(prompt, 16, 100) == 32
    exact = tokens(32, "b")  # every block cached: the last token is still computed
    cache.admit(exact, 16, 100)
    assert cache.admit(exact, 16, 100) == 31
    assert cache.stats() == {"requests": 4, "prompt_tokens": 144, "cached_tokens": 63,
                             "hit_rate": round(63 / 144, 4), "cached_blocks": 4}


def test_a_longer_history_hits_the_blocks_it_shares_and_a_different_start_hits_nothing():
    cache = PrefixCache()
    history = tokens(32)
    cache.admit(history, 16, 100)
    assert cache.admit(history + tokens(20, "c"), 16, 100) == 32
    # Chained keys: the same block after a different first block is another prefix.
    assert cache.admit(tokens(16, "z") + tokens(16), 16, 100) == 0


def test_the_cache_keeps_at_most_its_blocks_and_evicts_the_least_recently_used():
    cache = PrefixCache()
    first, second = tokens(33, "a"), tokens(33, "b")  # two blocks each
    cache.admit(first, 16, 2)
    cache.admit(second, 16, 2)
    assert cache.stats()["cached_blocks"] == 2
    assert cache.admit(first, 16, 2) == 0  # evicted by the second prompt
    assert cache.admit(first, 16, 2) == 32


def test_eviction_takes_a_prompts_tail_before_its_root():
    cache = PrefixCache()
    cache.admit(tokens(48, "a"), 16, 3)  # three blocks: the cache is full
    cache.admit(tokens(17, "b"), 16, 3)  # one more block evicts one of those three
    assert cache.admit(tokens(49, "a"), 16, 3) == 32  # the root and second block survived


def test_no_blocks_means_no_caching():
    cache = PrefixCache()
    cache.admit(tokens(40), 16, 0)
    assert cache.admit(tokens(40), 16, 0) == 0 and cache.stats()["cached_blocks"] == 0


# ----- delays ------------------------------------------------------------------------------------

def test_a_cache_hit_cuts_time_to_first_token_by_the_prefill_it_saves():
    timing = Timing.of(machine(ttft_seconds=0.05, prefill_seconds_per_token=0.001, decode_seconds_per_token=0.02))
    assert timing.first_token_seconds(100, 0) == pytest.approx(0.15)
    assert timing.first_token_seconds(100, 96) == pytest.approx(0.054)
    assert timing.decode_seconds_per_token == 0.02


def test_unset_timing_is_one_token_every_latency_as_before():
    timing = Timing.of(machine(latency_seconds=0.03))
    assert timing == Timing(ttft_seconds=0.03, prefill_seconds_per_token=0.0, decode_seconds_per_token=0.03)
    assert timing.first_token_seconds(500, 0) == 0.03


# ----- configuration -----------------------------------------------------------------------------

def cluster(*machines: dict) -> dict:
    base = {"region": "westDC2", "gpu_name": "RTX 4090", "gpu_num": 1, "cpu_num": 8, "memory_gb": 32,
            "price": 1000, "max_cuda": 124, "latency_seconds": 0.0, "ttft_seconds": 0.0,
            "decode_seconds_per_token": 0.0}
    return {"machines": [{**base, **m} for m in machines], "images": [{"image_uuid": IMAGE, "name": "serve"}]}


def test_the_cluster_file_checks_every_model_server_setting():
    bad = {"machine_id": "0a0a0a0a0a", "ttft_seconds": -1, "prefill_seconds_per_token": "fast",
           "prefix_cache_blocks": 1.5, "cache_block_tokens": 0}
    with pytest.raises(ClusterConfigError) as caught:
        Simulator(cluster=cluster(bad))
    problems = " ".join(caught.value.problems)
    for key in ("ttft_seconds", "prefill_seconds_per_token", "prefix_cache_blocks", "cache_block_tokens"):
        assert key in problems


# ----- over HTTP ---------------------------------------------------------------------------------

@pytest.fixture
def two_machines():
    """Two one-GPU hosts: one caches 100 blocks of 16 tokens, the other none."""
    spec = cluster({"machine_id": "0a0a0a0a0a", "prefix_cache_blocks": 100},
                   {"machine_id": "0b0b0b0b0b", "prefix_cache_blocks": 0})
    with Simulator(speed=1, seed=5, cluster=spec) as sim:
        body = {"name": "llm", "deployment_type": "ReplicaSet", "replica_num": 2,
                "container_template": {"gpu_name_set": ["RTX 4090"], "gpu_num": 1, "cuda_v": 118,
                                       "cpu_num_from": 1, "cpu_num_to": 100, "memory_size_from": 1,
                                       "memory_size_to": 256, "price_from": 10, "price_to": 9000,
                                       "image_uuid": IMAGE, "cmd": "sleep infinity"}}
        answer = requests.post(sim.url + "/api/v1/dev/deployment", json=body, headers={"Authorization": TOKEN}, timeout=5)
        assert answer.json()["code"] == "Success"
        sim.advance(30)
        yield sim, {c["machine_id"]: c for c in sim.containers() if c["status"] == "running"}


def chat(url: str, content: str, **extra) -> requests.Response:
    body = {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": content}], **extra}
    return requests.post(url + "/v1/chat/completions", json=body, timeout=5)


def test_usage_reports_cached_tokens_per_machine_config(two_machines):
    sim, by_machine = two_machines
    caching, plain = by_machine["0a0a0a0a0a"]["info"]["service_url"], by_machine["0b0b0b0b0b"]["info"]["service_url"]
    prompt_length = len(prompt_tokens({"messages": [{"role": "user", "content": TEN_BLOCKS}]}, chat=True))
    requests.get(plain + "/metrics", timeout=5)
    assert sim.prefix_cache_stats() == []  # a metrics read is no request
    first = chat(caching, TEN_BLOCKS).json()["usage"]
    assert first == {"prompt_tokens": prompt_length, "completion_tokens": 2, "total_tokens": prompt_length + 2,
                     "prompt_tokens_details": {"cached_tokens": 0}}
    assert chat(caching, TEN_BLOCKS).json()["usage"]["prompt_tokens_details"]["cached_tokens"] == prompt_length // 16 * 16
    chat(plain, TEN_BLOCKS)
    assert chat(plain, TEN_BLOCKS).json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    stats = {entry["machine_id"]: entry for entry in sim.prefix_cache_stats()}
    assert stats["0a0a0a0a0a"]["requests"] == 2 and stats["0a0a0a0a0a"]["cached_tokens"] == prompt_length // 16 * 16
    assert stats["0b0b0b0b0b"]["cached_tokens"] == 0 and stats["0b0b0b0b0b"]["cached_blocks"] == 0
    over_http = requests.get(sim.url + "/_sim/prefix_cache", headers={"Authorization": TOKEN}, timeout=5).json()["data"]
    assert {entry["container_uuid"]: entry for entry in over_http} == \
        {entry["container_uuid"]: entry for entry in sim.prefix_cache_stats()}
    page = requests.get(caching + "/metrics", timeout=5).text
    assert f'vllm:prefix_cache_queries_total{{model_name="autodl-sim"}} {2 * prompt_length:.1f}' in page
    assert f'vllm:prefix_cache_hits_total{{model_name="autodl-sim"}} {prompt_length // 16 * 16:.1f}' in page
    sim.crash_container(by_machine["0b0b0b0b0b"]["uuid"])
    assert [entry["machine_id"] for entry in sim.prefix_cache_stats()] == ["0a0a0a0a0a"]  # running ones only


def test_a_stream_reports_usage_last_when_asked(two_machines):
    _, by_machine = two_machines
    url = by_machine["0a0a0a0a0a"]["info"]["service_url"]
    events = [line[len("data: "):] for line in chat(url, TEN_BLOCKS, stream=True,
                                                    stream_options={"include_usage": True}).text.splitlines()
              if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"] == [] and last["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    plain = [line for line in chat(url, TEN_BLOCKS, stream=True).text.splitlines() if line.startswith("data: {")]
    assert all("usage" not in json.loads(line[len("data: "):]) for line in plain)


def test_the_model_server_settings_change_at_run_time(two_machines):
    sim, by_machine = two_machines
    url = by_machine["0b0b0b0b0b"]["info"]["service_url"]
    headers = {"Authorization": TOKEN}
    answer = requests.post(sim.url + "/_sim/llm", headers=headers, timeout=5,
                           json={"machine_id": "0b0b0b0b0b", "prefix_cache_blocks": 50, "prefill_seconds_per_token": 0.0})
    assert answer.json()["data"]["prefix_cache_blocks"] == 50
    chat(url, TEN_BLOCKS)
    assert chat(url, TEN_BLOCKS).json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    for bad in ({"machine_id": "0b0b0b0b0b", "cache_block_tokens": 0},
                {"machine_id": "0b0b0b0b0b", "speed": 1},
                {"machine_id": "ffffffffff", "prefix_cache_blocks": 1}):
        refused = requests.post(sim.url + "/_sim/llm", headers=headers, json=bad, timeout=5)
        assert refused.status_code == 400, bad
