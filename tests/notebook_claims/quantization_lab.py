"""What the int8 notebook's quantization lab shows on the real weights (offline source), as its notes state it,
asserted on the notebook's own run: `quant_lab`, each variant's perplexity on the passage and the MB a decode step
reads, as its last cell leaves them (see conftest.py).

Each bound is a third or more of the value it bounds away from the stored run's figure (+0.5%, +7.6%, +25%, +34%),
far beyond what float32 rounding moves between CPUs (about 1e-5 of a perplexity).
"""

import pytest

NOTEBOOK = "standalone-gemma3-int8.ipynb"
RESULTS = "quant_lab"  # label -> {"perplexity": float, "MB per token": float}


def arguments(results):
    """What the claims below take: each variant's row, with its perplexity's cost against the weights as converted."""
    reference = results["as converted"]["perplexity"]
    return {"quant_lab": {label: dict(row, cost=row["perplexity"] / reference - 1) for label, row in results.items()}}


def test_8_bits_are_nearly_free_for_half_the_bytes(quant_lab):
    assert abs(quant_lab["int8 everything"]["cost"]) < 0.01
    assert quant_lab["int8 everything"]["MB per token"] / quant_lab["as converted"]["MB per token"] == pytest.approx(
        0.5, abs=0.01)  # the int8 weights plus a bfloat16 scale per row


def test_4_bits_are_not(quant_lab):
    assert 0.02 < quant_lab["int4 g32 table"]["cost"] < 0.15  # several percent
    assert 0.15 < quant_lab["int4 g32 blocks"]["cost"] < 0.40  # about a quarter
    assert 0.22 < quant_lab["int4 g32 everything"]["cost"] < 0.50  # about a third


def test_int4_costs_the_table_less_than_the_blocks(quant_lab):
    assert quant_lab["int4 g32 table"]["cost"] < quant_lab["int4 g32 blocks"]["cost"]
