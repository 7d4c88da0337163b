"""The KV-cache notebook: cached generation equals the uncached model, step by step.

Tiny fp32 config with a window of 4 tokens, so generations cross the window many times and ring
buffers wrap over and over. The cached and uncached paths run the same float32 operations on the
same numbers, grouped differently, so their logits agree up to float32 rounding (`assert_close_fp32`).
"""

import pytest
import torch
from reference import assert_close_fp32, random_ids, randomize_norms_, tiny_config


@pytest.fixture(scope="module")
def tiny(nb2):
    cfg = tiny_config(nb2)
    torch.manual_seed(0)
    return cfg, randomize_norms_(nb2.Gemma3Model(cfg).eval())


# Shorter than, equal to, longer than the window of 4; the fast subset keeps the longest.
@pytest.mark.parametrize("prompt_len", [*(pytest.param(n, marks=pytest.mark.slow) for n in (1, 3, 4, 10)), 23])
def test_cached_logits_equal_uncached_at_every_step(tiny, prompt_len):
    cfg, model = tiny
    new_tokens = 30  # crosses the window of 4 seven times
    ids = random_ids(cfg, prompt_len, seed=prompt_len)
    model.setup_cache(prompt_len + new_tokens)
    with torch.no_grad():
        cached = model.prefill(ids)
        for step in range(new_tokens):
            uncached = model(ids, last_token_only=True)
            try:
                assert_close_fp32(cached, uncached)
            except AssertionError as err:
                raise AssertionError(f"step {step} (position {ids.shape[1] - 1}): {err}") from None
            assert cached.argmax(-1).item() == uncached.argmax(-1).item()
            next_id = uncached[:, -1].argmax(-1, keepdim=True)
            cached = model.decode(next_id, torch.tensor([ids.shape[1]]))
            ids = torch.cat([ids, next_id], dim=1)


@pytest.mark.slow
@pytest.mark.parametrize("prompt_len", [2, 9])
def test_greedy_generation_identical(nb2, tiny, prompt_len):
    cfg, model = tiny
    ids = random_ids(cfg, prompt_len, seed=100 + prompt_len)
    assert list(nb2.generate_text_stream(model, ids, 40)) == nb2.generate_uncached(model, ids, 40)


def test_ring_buffer_sizes(tiny):
    cfg, model = tiny
    model.setup_cache(50)
    for layer_type, cache in zip(cfg["layer_types"], model.caches, strict=True):
        expected = 50 if layer_type == "full_attention" else cfg["sliding_window"]
        assert cache.k.shape == (1, cfg["n_kv_groups"], expected, cfg["head_dim"])
        assert cache.v.shape == cache.k.shape
    model.setup_cache(3)  # a budget smaller than the window: no layer holds more than the budget
    assert all(cache.capacity == 3 for cache in model.caches)


def test_cache_is_written_in_place_not_reallocated(nb2, tiny):
    cfg, model = tiny
    model.setup_cache(40)
    pointers = [cache.k.data_ptr() for cache in model.caches]
    list(nb2.generate_text_stream(model, random_ids(cfg, 6, seed=1), 30))
    assert [cache.k.data_ptr() for cache in model.caches] == pointers


@pytest.mark.slow
def test_reuse_after_reset_equals_fresh_model(nb2, tiny):
    cfg, model = tiny
    first, other = random_ids(cfg, 7, seed=7), random_ids(cfg, 12, seed=12)
    fresh = nb2.Gemma3Model(cfg).eval()
    fresh.load_state_dict(model.state_dict())
    expected = list(nb2.generate_text_stream(fresh, first, 25))
    model.setup_cache(64)
    list(nb2.generate_text_stream(model, other, 30))  # leaves the cache full of another prompt
    assert list(nb2.generate_text_stream(model, first, 25)) == expected


def test_prompt_at_the_context_limit(nb2, tiny):
    cfg, model = tiny
    context = cfg["context_length"]
    ids = random_ids(cfg, context - 1, seed=3)
    tokens = list(nb2.generate_text_stream(model, ids, 1))  # prompt + 1 new token = the whole context
    with torch.no_grad():
        assert tokens == [model(ids, last_token_only=True).argmax(-1).item()]
    with pytest.raises(ValueError, match="context length"):
        list(nb2.generate_text_stream(model, ids, 2))
    with pytest.raises(ValueError, match="context length"):
        model.setup_cache(context + 1)


@pytest.mark.slow
@pytest.mark.uses_inductor
def test_compiled_decode_equals_eager_and_compiles_once(nb2, tiny):
    cfg, model = tiny
    ids = random_ids(cfg, 6, seed=6)
    model.setup_cache(48)
    eager = list(nb2.generate_text_stream(model, ids, 40))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    inductor = torch._inductor.config
    settings_before = (inductor.freezing, inductor.cpp_wrapper)
    compiled_decode = nb2.compile_decode(model, fastest=True)  # frozen weights and C++ wrapper on CPU
    compiled = list(nb2.generate_text_stream(model, ids, 40, decode=compiled_decode))
    assert (inductor.freezing, inductor.cpp_wrapper) == settings_before  # scoped to the compiled calls
    again = list(nb2.generate_text_stream(model, random_ids(cfg, 9, seed=9), 30, decode=compiled_decode))
    assert compiled == eager
    assert len(again) == 30
    # 39 + 29 decode steps at different positions, one graph: positions are tensors, shapes fixed.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()
