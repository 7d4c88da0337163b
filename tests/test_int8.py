"""The KV-cache notebook's optional int8 section: weight-only int8 for the blocks and the tied head.

Tiny fp32 config. The int8 model is checked against its own dequantized weights (the kernel must
compute exactly what the stored integers and scales say), against the cache-free path of the same
int8 model, and against the unquantized model within what 8-bit rounding allows.
"""

import copy

import pytest
import torch
import torch.nn as nn
from reference import random_ids, randomize_norms_, tiny_config


def tiny_models(nb2, seed=0):
    """(cfg, unquantized, quantized): the same random weights before and after quantize_int8_."""
    cfg = tiny_config(nb2)
    torch.manual_seed(seed)
    model = randomize_norms_(nb2.Gemma3Model(cfg).eval())
    quantized = nb2.quantize_int8_(copy.deepcopy(model))
    return cfg, model, quantized


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_linear_computes_with_its_stored_integers(nb2, dtype):
    weight = (torch.randn(300, 64, generator=torch.Generator().manual_seed(0)) * 0.05).to(dtype)
    layer = nb2.Int8Linear(weight, rows_per_chunk=7)  # chunks that do not divide the rows evenly
    dequantized = layer.weight_int8.float() * layer.scale.float()[:, None]
    assert layer.weight_int8.dtype == torch.int8
    assert layer.weight_int8.abs().amax(dim=1).eq(127).all()  # each row's largest weight maps to 127
    step = layer.scale.float()[:, None]
    scale_rounding = 127 * torch.finfo(dtype).eps  # the scale is stored in the model's dtype, rounded
    assert ((dequantized - weight.float()).abs() <= (0.5 + scale_rounding) * step + 1e-7).all()  # half a step
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(1)).to(dtype)
    expected = (x.float() @ dequantized.T).to(dtype)
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(layer(x), expected, atol=tolerance, rtol=tolerance)


def test_quantize_int8_keeps_the_head_tied_and_halves_the_weights(nb2):
    cfg, model, quantized = tiny_models(nb2)
    assert not [name for name, m in quantized.named_modules() if isinstance(m, nn.Linear | nn.Embedding)]
    assert quantized.tok_emb.head is quantized.out_head  # one int8 table for lookups and head
    ids = torch.arange(cfg["vocab_size"])[None]
    head = quantized.out_head
    dequantized_table = head.weight_int8.float() * head.scale[:, None]
    torch.testing.assert_close(quantized.tok_emb(ids)[0], dequantized_table, atol=0, rtol=0)
    linear_bytes = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, nn.Linear))  # head counted once
    int8_bytes = sum(m.weight_int8.numel() for m in quantized.modules() if isinstance(m, nb2.Int8Linear))
    assert int8_bytes * 4 == linear_bytes  # every linear weight (tied head once) now one byte per number
    assert nb2.weight_bytes(quantized) < nb2.weight_bytes(model) / 2  # fp32 -> int8 plus norms and scales


def test_int8_model_stays_close_and_its_cache_matches_its_uncached_path(nb2):
    cfg, model, quantized = tiny_models(nb2)
    ids = random_ids(cfg, 20, seed=2)
    with torch.no_grad():
        reference, logits = model(ids), quantized(ids)
        relative = ((logits - reference).norm() / reference.norm()).item()
        assert relative < 0.05, f"int8 logits differ from fp32 by {relative:.1%}"
        assert relative > 0  # the quantization did change the weights
        uncached = logits[:, -1:]
        quantized.setup_cache(ids.shape[1] + 10)
        cached = quantized.prefill(ids)
        torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=1e-5)
    tokens = list(nb2.generate_text_stream(quantized, ids, 10))
    with torch.no_grad():
        for step, token in enumerate(tokens):  # each cached token is the uncached int8 model's greedy choice
            assert token == quantized(torch.tensor([ids[0].tolist() + tokens[:step]])).argmax(-1)[0, -1].item()
