"""The int8 notebook on the real weights: what its lab's notes state, the int8 model loaded straight from the file,
and what it costs in perplexity.
(The rounding and the int8 layers themselves are checked on tiny models: tests/tiny_models/test_quantization.py.)
"""

import pytest
import torch
from reference import PASSAGE

pytestmark = pytest.mark.slow  # the real weights


def test_load_quantized_real_weights_equal_quantizing_the_loaded_model(nb3, offline_folder):
    from support.notebook_import import notebook_model

    cfg = dict(nb3.GEMMA3_CONFIG_270M, dtype=torch.bfloat16)
    direct = nb3.load_quantized(cfg, offline_folder / "model.safetensors")
    expected = nb3.quantize_int8_(notebook_model(nb3, torch.bfloat16, offline_folder))
    expected_buffers = dict(expected.named_buffers())
    for name, buffer in direct.named_buffers():
        assert torch.equal(buffer, expected_buffers[name]), name
    for (name, param), (_, other) in zip(direct.named_parameters(), expected.named_parameters(), strict=True):
        assert torch.equal(param, other), name
    assert direct.tok_emb.head is direct.out_head
    assert nb3.weight_bytes(direct) < 0.51 * 536_223_056  # half the bfloat16 weights (plus scales and norms)



def test_int8_keeps_the_real_models_perplexity_in_bfloat16(nb3, offline_folder):
    """What a reader runs: the int8 model (bfloat16 activations) against the bfloat16 model it came from."""
    from support.notebook_import import notebook_model

    model = notebook_model(nb3, torch.bfloat16, offline_folder)
    tokenizer = nb3.Gemma3Tokenizer(offline_folder / "tokenizer.json")
    text = PASSAGE.read_text(encoding="utf-8")
    ids = torch.tensor([tokenizer.encode(text)[:256]])
    before = nb3.perplexity(model, ids)
    after = nb3.perplexity(nb3.quantize_int8_(model), ids)
    print(f"\n[int8, real weights, bfloat16, {ids.shape[1]} tokens] perplexity {before:.3f} -> {after:.3f}")
    # bf16 rounding alone moves these perplexities by ~0.1% from one CPU to another (22.94 vs 22.96 on the
    # notebook's passage, AVX-512 vs AVX2); int8 rounding itself measured +1.1% here (25.97 -> 26.25). 2%
    # covers both, while a wrong scale or a transposed table multiplies perplexity many times over.
    assert abs(after / before - 1) < 0.02


# The lab's notes, on the offline weights. Each bound is a third or more of the value it bounds away from the stored
# run's figure (+0.5%, +7.6%, +25%, +34%), far beyond what float32 rounding moves between CPUs (about 1e-5 of a
# perplexity).
@pytest.fixture(scope="module")
def quant_lab(nb3, real_model, lab_passage_ids):
    lab = nb3.run_quant_lab(real_model("nb3", torch.float32), lab_passage_ids, nb3.QUANT_LAB_VARIANTS)
    reference = lab["as converted"]["perplexity"]
    return {label: dict(row, cost=row["perplexity"] / reference - 1) for label, row in lab.items()}


def test_8_bits_are_nearly_free_for_half_the_bytes(quant_lab):
    assert abs(quant_lab["int8 everything"]["cost"]) < 0.01
    assert quant_lab["int8 everything"]["MB per token"] / quant_lab["as converted"]["MB per token"] == pytest.approx(
        0.5, abs=0.01)  # the int8 weights plus a bfloat16 scale per row


def test_4_bits_are_not(quant_lab):
    assert 0.02 < quant_lab["int4 g32 table"]["cost"] < 0.15  # several percent
    assert 0.15 < quant_lab["int4 g32 blocks"]["cost"] < 0.40  # about a quarter
    assert 0.22 < quant_lab["int4 g32 everything"]["cost"] < 0.50  # about a third


def test_the_table_holds_most_of_the_bytes_and_int4_costs_it_less_than_the_blocks(nb3, real_model, quant_lab):
    model = real_model("nb3", torch.float32)
    matrix_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))  # tied once
    assert model.out_head.weight.numel() / matrix_weights > 0.5
    assert quant_lab["int4 g32 table"]["cost"] < quant_lab["int4 g32 blocks"]["cost"]
