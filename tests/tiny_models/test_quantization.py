"""The int8 notebook: the rounding its lab measures, the int8 model that stores it, and the loader that never holds
the bfloat16 weights.

Tiny fp32 configs (the real weights, and the lab's claims: tests/real_weights/test_int8_real_weights.py). Every
quantized product is checked against a plain dequantize-then-matmul in float32 of the very integers and scales the
layer stores.
"""

import copy

import pytest
import torch
import torch.nn as nn
from reference import assert_close_fp32, random_ids, randomize_norms_, tiny_config

F32_ROUNDING = 2.0**-24  # float32's unit roundoff: one rounded operation is off by at most this, relatively


def weights_with_outliers(rows=300, cols=64, seed=0):
    """Gaussian weights with a few large ones per matrix, like a trained model's."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=generator) * 0.05
    weight[torch.randint(0, rows, (20,), generator=generator), torch.randint(0, cols, (20,), generator=generator)] = 1.0
    return weight


def tiny_models(nb3, seed=0):
    """(cfg, unquantized, quantized): the same random weights before and after quantize_int8_."""
    cfg = tiny_config(nb3)
    torch.manual_seed(seed)
    model = randomize_norms_(nb3.Gemma3Model(cfg).eval())
    quantized = nb3.quantize_int8_(copy.deepcopy(model))
    return cfg, model, quantized


# ---------------------------------------------------------------- the rounding the lab measures
def test_round_int8_moves_each_weight_by_at_most_half_a_step(nb3):
    weight = weights_with_outliers()
    rounded = nb3.round_int8(weight)
    step = weight.abs().amax(dim=1, keepdim=True) / 127  # one step per row: its largest weight / 127
    # Half a step from rounding to the nearest level, plus float32's own roundings: w / step and level * step
    # are each off by at most 2^-24 of values up to 127 steps, so 2 * 127 * 2^-24 steps at most.
    assert ((rounded - weight).abs() <= (0.5 + 254 * F32_ROUNDING) * step).all()
    levels = rounded / step
    assert (levels - levels.round()).abs().max() < 1e-4  # whole numbers of steps (up to float32 rounding)
    assert levels.round().abs().max() == 127  # each row's largest weight is level +-127
    assert rounded.ne(weight).any()  # it does round


@pytest.mark.parametrize("group_size", [16, 32])
def test_round_int4_moves_each_weight_by_at_most_half_a_step_of_its_group(nb3, group_size):
    weight = weights_with_outliers()
    rounded = nb3.round_int4(weight, group_size)
    groups = weight.reshape(weight.shape[0], -1, group_size)  # (out, in) -> (out, in/g, g)
    rounded_groups = rounded.reshape(groups.shape)  # (out, in) -> (out, in/g, g)
    low = groups.amin(dim=-1, keepdim=True)
    step = (groups.amax(dim=-1, keepdim=True) - low) / 15  # 16 levels span each group
    # Half a step, plus float32's roundings of (w - low) / step, level * step + low: each is off by at most 2^-24
    # of values up to 15 steps or the group's largest magnitude; 16 such roundings bound their sum.
    slack = 16 * F32_ROUNDING * (15 * step + groups.abs().amax(dim=-1, keepdim=True))
    assert ((rounded_groups - groups).abs() <= 0.5 * step + slack).all()
    levels = (rounded_groups - low) / step
    assert (levels - levels.round()).abs().max() < 1e-3  # each weight on one of the group's levels
    assert levels.round().min() == 0 and levels.round().max() == 15  # the levels run from the group's min to max


def test_int4_groups_of_16_round_finer_than_groups_of_32(nb3):
    weight = weights_with_outliers()
    error_16 = (nb3.round_int4(weight, 16) - weight).abs().mean()
    error_32 = (nb3.round_int4(weight, 32) - weight).abs().mean()
    assert error_16 < error_32  # a smaller group spans a smaller range, so its steps are smaller


def test_round_int8_is_what_int8_linear_stores(nb3):
    """The lab's int8 rows are the model's: the same integers and scales, so the same weights exactly."""
    weight = weights_with_outliers()
    layer = nb3.Int8Linear(weight, rows_per_chunk=7)
    stored = layer.weight_int8.float() * layer.scale[:, None]  # float32 scales for a float32 weight
    torch.testing.assert_close(stored, nb3.round_int8(weight), atol=0, rtol=0)


def test_round_weights_rounds_the_part_it_is_told_and_keeps_the_head_tied(nb3):
    cfg = tiny_config(nb3, emb_dim=64, hidden_dim=96)  # groups of 32 divide every row
    torch.manual_seed(0)
    model = nb3.Gemma3Model(cfg).eval()
    before = copy.deepcopy(model)
    nb3.round_weights_(model, "table", nb3.round_int8)
    assert model.out_head.weight is model.tok_emb.weight  # still one tensor
    torch.testing.assert_close(model.out_head.weight, nb3.round_int8(before.out_head.weight), atol=0, rtol=0)
    assert all(torch.equal(a, b) for a, b in zip(model.blocks.parameters(), before.blocks.parameters(), strict=True))
    nb3.round_weights_(model, "blocks", lambda w: nb3.round_int4(w, 32))
    linears = [(m, b) for m, b in zip(model.blocks.modules(), before.blocks.modules(), strict=True)
               if isinstance(m, nn.Linear)]
    for module, original in linears:
        torch.testing.assert_close(module.weight, nb3.round_int4(original.weight, 32), atol=0, rtol=0)


# ---------------------------------------------------------------- the int8 model
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_linear_computes_with_its_stored_integers(nb3, dtype):
    weight = (torch.randn(300, 64, generator=torch.Generator().manual_seed(0)) * 0.05).to(dtype)
    layer = nb3.Int8Linear(weight, rows_per_chunk=7)  # chunks that do not divide the rows evenly
    dequantized = layer.weight_int8.float() * layer.scale.float()[:, None]
    assert layer.weight_int8.dtype == torch.int8 and layer.scale.dtype == dtype
    assert layer.weight_int8.abs().amax(dim=1).eq(127).all()  # each row's largest weight maps to 127
    step = layer.scale.float()[:, None]
    scale_rounding = 127 * torch.finfo(dtype).eps  # the scale is stored in the model's dtype, rounded
    assert ((dequantized - weight.float()).abs() <= (0.5 + scale_rounding) * step + 1e-7).all()  # half a step
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(1)).to(dtype)
    expected = (x.float() @ dequantized.T).to(dtype)  # plain dequantize-then-matmul in float32
    # Same integers and scales, another kernel: fp32 sums of 64 products of O(1) values differ by a few
    # ulps (~1e-6), so 1e-4 is loose yet far below one rounding step of the weights (~1e-3 of a row's largest
    # weight, so ~1e-2 on these outputs). In bf16 the kernel's output is itself rounded to 8 bits: 2^-8 = 0.4%
    # relative, i.e. up to ~1e-2 on outputs up to ~2, so 3e-2 allows that rounding a few times over.
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(layer(x), expected, atol=tolerance, rtol=tolerance)


def test_quantize_int8_keeps_the_head_tied_and_halves_the_weights(nb3):
    cfg, model, quantized = tiny_models(nb3)
    assert not [name for name, m in quantized.named_modules() if isinstance(m, nn.Linear | nn.Embedding)]
    assert quantized.tok_emb.head is quantized.out_head  # one int8 table for lookups and head
    ids = torch.arange(cfg["vocab_size"])[None]
    head = quantized.out_head
    dequantized_table = head.weight_int8.float() * head.scale[:, None]
    torch.testing.assert_close(quantized.tok_emb(ids)[0], dequantized_table, atol=0, rtol=0)
    linear_bytes = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, nn.Linear))  # head counted once
    int8_bytes = sum(m.weight_int8.numel() for m in quantized.modules() if isinstance(m, nb3.Int8Linear))
    assert int8_bytes * 4 == linear_bytes  # every linear weight (tied head once) now one byte per number
    assert nb3.weight_bytes(quantized) < nb3.weight_bytes(model) / 2  # fp32 -> int8 plus norms and scales


def test_stored_bytes_counts_what_the_int8_model_and_the_int4_kernel_store(nb3):
    # Sizes the int4 kernel takes: rows in multiples of 16, rows' lengths in whole groups of 32.
    cfg = tiny_config(nb3, vocab_size=256, emb_dim=64, hidden_dim=96, dtype=torch.bfloat16)
    torch.manual_seed(0)
    model = nb3.Gemma3Model(cfg).eval()
    norm_bytes = sum(p.numel() * 2 for name, p in model.named_parameters() if "norm" in name)
    assert nb3.stored_bytes(model, {"table": "bfloat16", "blocks": "bfloat16"}) + norm_bytes == nb3.weight_bytes(model)
    quantized = nb3.quantize_int8_(copy.deepcopy(model))
    assert nb3.stored_bytes(model, {"table": "int8", "blocks": "int8"}) + norm_bytes == nb3.weight_bytes(quantized)
    # int4 in groups of 32 as PyTorch's CPU kernel stores it: two weights a byte, a bfloat16 scale and zero per group
    int4_bytes = 0
    for m in [*model.blocks.modules(), model.out_head]:
        if isinstance(m, nn.Linear):
            n, k = m.weight.shape
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.zeros(n, k, dtype=torch.int32), 1)
            scales_and_zeros = torch.zeros(k // 32, n, 2, dtype=torch.bfloat16)
            int4_bytes += packed.numel() * packed.element_size() + scales_and_zeros.numel() * 2
    assert nb3.stored_bytes(model, {"table": "int4 g32", "blocks": "int4 g32"}) == int4_bytes


def test_quantizing_twice_changes_nothing(nb3):
    """A reader may run the int8 cell again: the second pass must neither fail nor quantize int8 twice."""
    cfg, _, quantized = tiny_models(nb3)
    ids = random_ids(cfg, 8, seed=3)
    with torch.no_grad():
        before = quantized(ids)
        assert torch.equal(nb3.quantize_int8_(quantized)(ids), before)


def test_int8_model_stays_close_and_its_cache_matches_its_uncached_path(nb3):
    cfg, model, quantized = tiny_models(nb3)
    ids = random_ids(cfg, 20, seed=2)
    with torch.no_grad():
        reference, logits = model(ids), quantized(ids)
        relative = ((logits - reference).norm() / reference.norm()).item()
        # Rounding each weight to one of 255 steps of its row's largest value moves a product by ~0.2%
        # (half a step, 1/254, over sqrt(fan-in) uncorrelated errors); through 6 blocks that measured ~1%.
        # 5% allows for that; a wrong scale or transposed table gives 100% or more.
        assert relative < 0.05, f"int8 logits differ from fp32 by {relative:.1%}"
        assert relative > 0  # the quantization did change the weights
        uncached = logits[:, -1:]
        quantized.setup_cache(ids.shape[1] + 10)
        cached = quantized.prefill(ids)
        assert_close_fp32(cached, uncached)  # one int8 model, two paths: equal up to float32 rounding
    tokens = list(nb3.generate_text_stream(quantized, ids, 10))
    with torch.no_grad():
        for step, token in enumerate(tokens):  # each cached token is the uncached int8 model's greedy choice
            assert token == quantized(torch.tensor([ids[0].tolist() + tokens[:step]])).argmax(-1)[0, -1].item()


# ---------------------------------------------------------------- loading straight into int8
def save_hf_checkpoint(nb3, model, path):
    """The model's weights as a Hugging Face-named .safetensors file (the tied table once)."""
    from safetensors.torch import save_file

    save_file({nb3.hf_name_of(name): p.detach().contiguous() for name, p in model.named_parameters()}, str(path))
    return path


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_load_quantized_gives_the_weights_of_quantizing_a_loaded_model(nb3, tmp_path, dtype):
    cfg = tiny_config(nb3, dtype=dtype)
    torch.manual_seed(0)
    original = randomize_norms_(nb3.Gemma3Model(cfg).eval())
    path = save_hf_checkpoint(nb3, original, tmp_path / "model.safetensors")
    expected = nb3.quantize_int8_(copy.deepcopy(original))  # what the file holds, loaded exactly, then rounded
    direct = nb3.load_quantized(cfg, path)
    tensors = dict([*direct.named_parameters(), *direct.named_buffers()])
    expected_tensors = dict([*expected.named_parameters(), *expected.named_buffers()])
    assert sorted(tensors) == sorted(expected_tensors)  # the same modules, RoPE tables included
    for name, tensor in tensors.items():
        assert tensor.device.type == "cpu", f"{name} left on {tensor.device}"
        assert tensor.dtype == expected_tensors[name].dtype, name
        assert torch.equal(tensor, expected_tensors[name]), name  # bit for bit: the same roundings of the same rows
    assert direct.tok_emb.head is direct.out_head  # one int8 table for lookups and head
    ids = random_ids(cfg, 12, seed=1)
    with torch.no_grad():
        assert torch.equal(direct(ids), expected(ids))


def test_load_quantized_reads_a_piece_at_a_time(nb3, tmp_path, monkeypatch):
    """The claim behind its memory: no read asks for more rows than one chunk of the biggest matrix."""
    cfg = tiny_config(nb3)
    torch.manual_seed(0)
    path = save_hf_checkpoint(nb3, nb3.Gemma3Model(cfg), tmp_path / "model.safetensors")
    rows_read = []
    original_getitem = nb3.TensorRows.__getitem__

    def spy(self, rows):
        piece = original_getitem(self, rows)
        rows_read.append((self.name, piece.shape[0]))
        return piece

    monkeypatch.setattr(nb3.TensorRows, "__getitem__", spy)
    original_init = nb3.Int8Linear.__init__
    monkeypatch.setattr(nb3.Int8Linear, "__init__", lambda self, weight, dtype=None, rows_per_chunk=4_096:
                        original_init(self, weight, dtype, rows_per_chunk=100))
    nb3.load_quantized(cfg, path)
    table = [n for name, n in rows_read if name == "model.embed_tokens.weight"]
    assert len(table) == 3 and max(table) == 100  # 257 rows of the table: 100 + 100 + 57
    assert max(n for _, n in rows_read) <= 100


def test_load_quantized_refuses_a_checkpoint_that_does_not_match(nb3, tmp_path):
    from safetensors.torch import save_file

    cfg = tiny_config(nb3)
    torch.manual_seed(0)
    weights = {nb3.hf_name_of(name): p.detach() for name, p in nb3.Gemma3Model(cfg).named_parameters()}
    del weights["model.layers.2.mlp.up_proj.weight"]
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="model.layers.2.mlp.up_proj.weight"):
        nb3.load_quantized(cfg, tmp_path / "model.safetensors")
