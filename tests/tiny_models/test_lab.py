"""The lab's claims (notebook 1, section 16).

The notebook prints each claim of its notes with whether its own run bears it out, computed by
`lab_findings` from the run's per-token losses; nbval compares those verdicts on every run of the
notebook (on the real weights, under both arithmetics of CI). The lab itself runs there, once: here
`lab_findings` is checked to compute each verdict from the numbers, so that a stored `True` can only
come from numbers that bear the claim out. Synthetic losses, shaped like the real run's (11 rows,
920 tokens, window 512; the real run's perplexities are 30.4 as designed, 33.6 and 45.4 for the
windows, 75.2 and 37.3 for the spans, 249 and 32.9 for the bases, 265 and 42.7 for both, 2.43e4 without
QK-norm, 2.73e8 without the embedding scale).
"""

import math

import pytest
import torch
from reference import random_ids, randomize_norms_, tiny_config

WINDOW, TOKENS = 512, 920
PERPLEXITY = {  # what the synthetic rows average to: the real run's figures
    "Gemma 3 as designed": 30.4, "window 512 -> 128": 33.6, "window 512 -> 32": 45.4,
    "span: every layer global": 75.2, "span: every layer local": 37.3,
    "RoPE: every layer global base": 249.0, "RoPE: every layer local base": 32.9,
    "both: every layer global": 265.0, "both: every layer local": 42.7,
    "no QK-norm": 2.43e4, "no sqrt(emb_dim) embedding scale": 2.73e8,
}
FIRST_CHANGED = {"window 512 -> 128": 128, "window 512 -> 32": 32, "span: every layer global": WINDOW,
                 "span: every layer local": WINDOW}  # every other edit changes the loss from position 0


def synthetic_lab(perplexity=PERPLEXITY, first_changed=FIRST_CHANGED):
    """Per-token losses: the design's, and each row equal to it before its first changed position and shifted
    after it so that the row's mean loss is log(perplexity)."""
    noise = torch.rand(TOKENS, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    designed = noise - noise.mean() + math.log(perplexity["Gemma 3 as designed"])
    lab = {"Gemma 3 as designed": designed}
    for name, value in perplexity.items():
        if name != "Gemma 3 as designed":
            start = first_changed.get(name, 0)
            losses = designed.clone()
            losses[start:] += (math.log(value) * TOKENS - designed.sum()) / (TOKENS - start)
            lab[name] = losses
    return lab


def findings(nb1, lab):
    return dict(nb1.lab_findings(lab, WINDOW))


def test_the_real_runs_numbers_bear_out_every_claim(nb1):
    assert all(findings(nb1, synthetic_lab()).values())


@pytest.mark.parametrize(("row", "value", "claims_that_fail"), [
    ("window 512 -> 32", 29.0, ["every edit costs the trained model perplexity"]),
    ("window 512 -> 32", 70.0, ["the windows cost gently: even 512 -> 32 less than doubles the perplexity"]),
    ("span: every layer global", 50.0, ["span: every layer global more than doubles the perplexity, all of it past "
                                        "position 512"]),
    ("span: every layer local", 80.0, ["span: every layer local costs less than span: every layer global"]),
    ("RoPE: every layer global base", 70.0, ["alone, the global RoPE base costs more than the global span"]),
    ("both: every layer global", 200.0, ["both: every layer global costs more than either change alone"]),
    ("no QK-norm", 2000.0, ["no QK-norm multiplies the perplexity by more than 100"]),
    ("no QK-norm", 3e8, ["no embedding scale is the worst row"]),
])
def test_each_perplexity_claim_fails_when_its_numbers_do(nb1, row, value, claims_that_fail):
    result = findings(nb1, synthetic_lab(dict(PERPLEXITY, **{row: value})))
    assert sorted(claim for claim, holds in result.items() if not holds) == sorted(claims_that_fail)


@pytest.mark.parametrize(("row", "first_changed", "claim"), [
    ("window 512 -> 128", 100, "a smaller window leaves every position before its edge exactly as designed"),
    ("span: every layer local", 400, "the span rows leave every position before 512 exactly as designed"),
])
def test_each_exactness_claim_fails_when_an_earlier_position_moves(nb1, row, first_changed, claim):
    result = findings(nb1, synthetic_lab(first_changed=dict(FIRST_CHANGED, **{row: first_changed})))
    assert [name for name, holds in result.items() if not holds] == [claim]


def test_a_global_base_that_costs_only_late_fails_its_claim(nb1):
    lab = synthetic_lab(first_changed=dict(FIRST_CHANGED, **{"RoPE: every layer global base": WINDOW}))
    assert [name for name, holds in findings(nb1, lab).items() if not holds] == [
        "RoPE: every layer global base costs from the start, before position 512 too"]


def test_a_global_span_that_moves_early_positions_fails_both_of_its_claims(nb1):
    lab = synthetic_lab(first_changed=dict(FIRST_CHANGED, **{"span: every layer global": 300}))
    assert sorted(name for name, holds in findings(nb1, lab).items() if not holds) == sorted([
        "the span rows leave every position before 512 exactly as designed",
        "span: every layer global more than doubles the perplexity, all of it past position 512"])


def test_the_lab_rows_are_one_edit_each(nb1):
    """Each row's edit, applied to the 270M config: the span rows keep the trained RoPE bases, the RoPE rows the
    trained spans (the two 'both' rows change the two together, as the notes say)."""
    cfg = dict(nb1.GEMMA3_CONFIG_270M, dtype=torch.float32)
    trained_spans, trained_ropes = cfg["layer_types"], nb1.rope_type_of_layers(cfg)
    for name, edit in nb1.lab_experiments(cfg).items():
        edited = dict(cfg, **edit)
        spans, ropes = list(edited["layer_types"]), nb1.rope_type_of_layers(edited)
        if name.startswith("span:"):
            assert ropes == trained_ropes and spans != trained_spans, name
        if name.startswith("RoPE:"):
            assert spans == trained_spans and ropes != trained_ropes, name
        if name.startswith("both:"):
            assert spans != trained_spans and ropes != trained_ropes, name


def test_each_row_equals_its_model_built_and_loaded_in_full(nb1):
    """run_lab builds each row on the meta device and hands it one shared float32 copy of the weights: every row's
    losses must equal those of the edited model built in full and loaded the ordinary way (the same float32
    operations on the same values: equal to the bit)."""
    cfg = tiny_config(nb1, dtype=torch.bfloat16)
    torch.manual_seed(0)
    model = randomize_norms_(nb1.Gemma3Model(cfg)).eval()
    ids = random_ids(cfg, 40, seed=1)
    experiments = {"as designed": {}, "window 4 -> 2": {"sliding_window": 2}, "every layer global":
                   {"layer_types": ["full_attention"] * cfg["n_layers"]}, "no QK-norm": {"qk_norm": False}}
    lab = nb1.run_lab(model, ids, experiments)
    for name, edit in experiments.items():
        full = nb1.Gemma3Model(dict(cfg, dtype=torch.float32, **edit)).eval()
        full.load_state_dict(model.state_dict())
        assert torch.equal(lab[name], nb1.token_losses(full, ids)), name
    assert len({losses.sum().item() for losses in lab.values()}) == len(experiments)  # each edit changed something
