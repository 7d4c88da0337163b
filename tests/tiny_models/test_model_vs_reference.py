"""Each building block of the notebook, and the whole model, against transformers' Gemma 3.

Tiny fp32 config, sequences 3-6x the sliding window, so local and global layers and both RoPE
bases all matter. Both sides compute the same float32 operations, differing only in summation
order, so they must agree up to float32 rounding (`assert_close_fp32`: 32 ulps of the largest value).
"""

import functools

import pytest
import torch
from reference import assert_close_fp32, hf_masks, hf_model, hf_state_dict, seeded_randn, tiny_config

SEQ = 20  # 5x the window of 4


@pytest.fixture(scope="module")
def pair(nb1):
    cfg = tiny_config(nb1)
    hf = hf_model(cfg)
    ours = nb1.Gemma3Model(cfg).eval()
    nb1.load_weights_into_gemma(ours, hf_state_dict(hf))
    return cfg, ours, hf


def hf_rope(hf, x, t, layer_type):
    return hf.model.rotary_emb(x, torch.arange(t)[None], layer_type)


def test_rmsnorm(nb1, pair):
    cfg, ours, hf = pair
    x = seeded_randn(2, SEQ, cfg["emb_dim"]) * 3
    assert_close_fp32(ours.blocks[0].input_layernorm(x), hf.model.layers[0].input_layernorm(x))


@pytest.mark.parametrize("layer_type", ["sliding_attention", "full_attention"])
def test_rope_both_bases(nb1, pair, layer_type):
    cfg, ours, hf = pair
    from transformers.models.gemma3.modeling_gemma3 import apply_rotary_pos_emb

    q = seeded_randn(1, cfg["n_heads"], SEQ, cfg["head_dim"])
    k = seeded_randn(1, cfg["n_kv_groups"], SEQ, cfg["head_dim"], seed=1)
    cos, sin = hf_rope(hf, q, SEQ, layer_type)
    ref_q, ref_k = apply_rotary_pos_emb(q, k, cos, sin)
    prefix = "local" if layer_type == "sliding_attention" else "global"
    our_cos, our_sin = getattr(ours, f"cos_{prefix}")[:SEQ], getattr(ours, f"sin_{prefix}")[:SEQ]
    assert_close_fp32(our_cos, cos[0])
    assert_close_fp32(our_sin, sin[0])
    assert_close_fp32(nb1.apply_rope(q, our_cos, our_sin), ref_q)
    assert_close_fp32(nb1.apply_rope(k, our_cos, our_sin), ref_k)


def test_rope_bases_differ(pair):
    _, ours, _ = pair  # a mix-up of the two bases would pass the tests above only if they were equal
    assert not torch.allclose(ours.cos_local[:SEQ], ours.cos_global[:SEQ])


def test_masks(nb1, pair):
    cfg, _, hf = pair
    ref = hf_masks(hf, cfg, SEQ)
    positions = torch.arange(SEQ)
    assert torch.equal(nb1.attention_mask(positions, positions), ref["full_attention"])
    sliding = nb1.attention_mask(positions, positions, cfg["sliding_window"])
    assert torch.equal(sliding, ref["sliding_attention"])
    assert sliding.sum(dim=-1).max() == cfg["sliding_window"]


@pytest.mark.parametrize("layer", [0, 2])  # a sliding-window layer and a global layer
def test_attention(nb1, pair, layer):
    cfg, ours, hf = pair
    layer_type = cfg["layer_types"][layer]
    x = seeded_randn(2, SEQ, cfg["emb_dim"])
    cos, sin = hf_rope(hf, x, SEQ, layer_type)
    mask = hf_masks(hf, cfg, SEQ)[layer_type]
    ref, _ = hf.model.layers[layer].self_attn(x, (cos, sin), torch.where(mask, 0.0, float("-inf"))[None, None])
    assert_close_fp32(ours.blocks[layer].attn(x, cos[0], sin[0], ours.blocks[layer].window), ref)


def test_feed_forward(pair):
    cfg, ours, hf = pair
    x = seeded_randn(2, SEQ, cfg["emb_dim"])
    assert_close_fp32(ours.blocks[1].ff(x), hf.model.layers[1].mlp(x))


@pytest.mark.parametrize("layer", [1, 5])
def test_block(pair, layer):
    cfg, ours, hf = pair
    layer_type = cfg["layer_types"][layer]
    x = seeded_randn(2, SEQ, cfg["emb_dim"])
    cos, sin = hf_rope(hf, x, SEQ, layer_type)
    mask = hf_masks(hf, cfg, SEQ)[layer_type]
    ref = hf.model.layers[layer](x, position_embeddings=(cos, sin),
                                 attention_mask=torch.where(mask, 0.0, float("-inf"))[None, None])
    ref = ref[0] if isinstance(ref, tuple) else ref
    assert_close_fp32(ours.blocks[layer](x, cos[0], sin[0]), ref)


@pytest.mark.parametrize("seq", [3, 4, 13, 40])  # shorter than, equal to, and 3-10x the window
def test_whole_model(pair, seq):
    cfg, ours, hf = pair
    ids = torch.randint(0, cfg["vocab_size"], (2, seq), generator=torch.Generator().manual_seed(seq))
    with torch.no_grad():
        assert_close_fp32(ours(ids), hf(ids).logits)
        assert_close_fp32(ours(ids, last_token_only=True), hf(ids).logits[:, -1:])


@pytest.mark.parametrize("chunk", [1, 3, 5])  # chunk edges inside, at and across the window of 4
def test_whole_model_with_queries_in_chunks(nb1, pair, monkeypatch, chunk):
    # causal_attention takes the queries `chunk` at a time (512 in the notebook), each against only the keys
    # it can see: with chunks smaller than the window the slicing of keys is exercised on every chunk.
    cfg, ours, hf = pair
    monkeypatch.setattr(nb1, "causal_attention", functools.partial(nb1.causal_attention, chunk=chunk))
    ids = torch.randint(0, cfg["vocab_size"], (2, 17), generator=torch.Generator().manual_seed(chunk))
    with torch.no_grad():
        assert_close_fp32(ours(ids), hf(ids).logits)


def test_embedding_scale_in_bf16(nb1):
    # In bf16 the reference multiplies by sqrt(640) rounded to bf16: 25.25, not 25.298.
    cfg = tiny_config(nb1, emb_dim=640, n_layers=1, layer_types=["full_attention"], dtype=torch.bfloat16)
    hf = hf_model(cfg)
    ours = nb1.Gemma3Model(cfg)
    nb1.load_weights_into_gemma(ours, hf_state_dict(hf))
    seen = []
    ours.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    ids = torch.arange(10)[None]
    with torch.no_grad():
        ours(ids)
        assert torch.equal(seen[0], hf.model.embed_tokens(ids))
