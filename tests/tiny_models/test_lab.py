"""The lab (notebook 1, section 16): each row is one config edit, and `run_lab`'s shared weights give each row the
losses of its edited model built and loaded in full. What the rows show on the real weights is asserted on the
notebook's own run: tests/notebook_claims/lab.py.
"""

import torch
from reference import random_ids, randomize_norms_, tiny_config


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


def test_the_window_rows_narrow_the_window_of_the_config_given(nb1):
    """The rows are named and sized from the reader's config: a window of 64 gives 64 -> 16 and 64 -> 4."""
    cfg = tiny_config(nb1, sliding_window=64)
    experiments = nb1.lab_experiments(cfg)
    assert experiments["window 64 -> 16"] == {"sliding_window": 16}
    assert experiments["window 64 -> 4"] == {"sliding_window": 4}


def test_a_row_of_fewer_blocks_is_the_first_blocks_of_the_model(nb1):
    cfg = tiny_config(nb1)
    torch.manual_seed(0)
    model = randomize_norms_(nb1.Gemma3Model(cfg)).eval()
    ids = random_ids(cfg, 20, seed=2)
    edit = {"n_layers": 4, "layer_types": cfg["layer_types"][:4]}
    lab = nb1.run_lab(model, ids, {"first 4": edit})
    first = nb1.Gemma3Model(dict(cfg, **edit)).eval()
    first.load_state_dict({name: w for name, w in model.state_dict().items()
                           if not name.startswith(("blocks.4.", "blocks.5."))})
    assert torch.equal(lab["first 4"], nb1.token_losses(first, ids))
