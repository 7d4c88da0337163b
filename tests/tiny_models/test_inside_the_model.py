"""Notebook 1's views inside the model (section 15), on a tiny model: what its notes say the views show."""

import torch
from reference import random_ids, randomize_norms_, tiny_config


def test_attention_map_is_zero_outside_a_window_and_not_in_a_global_layer(nb1):
    cfg = tiny_config(nb1)  # window 4; layer 0 slides, layer 2 is global
    torch.manual_seed(0)
    model = randomize_norms_(nb1.Gemma3Model(cfg).eval())
    ids = random_ids(cfg, 12, seed=3)
    positions = torch.arange(12)
    too_far = (positions[:, None] - positions[None, :]) >= cfg["sliding_window"]  # (t, s)
    local, global_ = nb1.attention_map(model, ids, 0), nb1.attention_map(model, ids, 2)  # (h, t, s) each
    assert local.shape == (cfg["n_heads"], 12, 12)
    assert (local[:, too_far] == 0).all()
    assert (global_[:, too_far] > 0).all()
    assert torch.allclose(local.sum(dim=-1), torch.ones(cfg["n_heads"], 12))  # each query's weights sum to 1


def test_the_last_block_output_gives_the_models_logits(nb1):
    """block_outputs catches the stream after every block, and the logit lens reads the last one as the model does."""
    cfg = tiny_config(nb1)
    torch.manual_seed(0)
    model = randomize_norms_(nb1.Gemma3Model(cfg).eval())
    ids = random_ids(cfg, 9, seed=4)
    outputs = nb1.block_outputs(model, ids)
    assert len(outputs) == cfg["n_layers"] and outputs[-1].shape == (1, 9, cfg["emb_dim"])
    with torch.no_grad():
        logits = model(ids)[0, -1]
    best, prob = nb1.logit_lens(model, ids)[-1]
    assert best == logits.argmax().item()
    assert abs(prob - torch.softmax(logits, dim=-1).max().item()) < 1e-6  # float32 softmax of the same logits
