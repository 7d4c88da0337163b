"""The weight loader accounts for every parameter, and a checkpoint that does not match fails before it copies any
tensor (what each refusal says: tests/tiny_models/test_entry_points.py).

Tiny fp32 config; the checkpoints are transformers' Gemma3ForCausalLM state dicts (random weights),
so expected values come from transformers. The real 236-tensor checkpoint is checked in
tests/real_weights/test_real_weights.py.
"""

import re

import pytest
import torch
from reference import hf_model, hf_state_dict, tiny_config
from safetensors.torch import save_file

LAST = "model.norm.weight"  # the loader's last parameter: a copy-as-you-check loader would copy all before it


@pytest.fixture
def setup(nb1):
    cfg = tiny_config(nb1)
    hf = hf_model(cfg)
    return cfg, hf, hf_state_dict(hf)


def snapshot(model):
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def assert_unchanged(model, before):
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), f"{name} was modified by a load that failed"


def assert_refused_unchanged(nb1, cfg, checkpoint, name):
    """Loading must fail naming `name` and leave a fresh model untouched; returns the error message."""
    model = nb1.Gemma3Model(cfg)
    before = snapshot(model)
    with pytest.raises(ValueError, match=re.escape(name)) as err:
        nb1.load_weights_into_gemma(model, checkpoint)
    assert_unchanged(model, before)  # in particular the tensors before it in loading order
    return str(err.value)


def assert_loaded(nb1, cfg, checkpoint, state_dict):
    """Loading `checkpoint` into a fresh model copies every tensor of `state_dict` into its parameter."""
    model = nb1.Gemma3Model(cfg)
    nb1.load_weights_into_gemma(model, checkpoint)
    for name, param in model.named_parameters():
        assert torch.equal(param, state_dict[nb1.hf_name_of(name)]), name


def test_good_load_copies_every_tensor(nb1, setup):
    cfg, _, state_dict = setup
    assert_loaded(nb1, cfg, state_dict, state_dict)


def test_missing_tensor(nb1, setup):
    cfg, _, state_dict = setup
    name = "model.layers.3.mlp.up_proj.weight"
    del state_dict[name]
    assert "missing" in assert_refused_unchanged(nb1, cfg, state_dict, name)


def test_unexpected_tensor(nb1, setup):
    cfg, _, state_dict = setup
    name = "model.layers.0.self_attn.q_proj.bias"  # Gemma 3 has no biases: a mis-converted checkpoint
    state_dict[name] = torch.zeros(cfg["n_heads"] * cfg["head_dim"])
    assert "unexpected" in assert_refused_unchanged(nb1, cfg, state_dict, name)


@pytest.mark.parametrize("name", ["model.layers.2.self_attn.k_proj.weight", LAST])
def test_misshapen_tensor_copies_nothing(nb1, setup, name):
    cfg, _, state_dict = setup
    state_dict[name] = state_dict[name][..., :-1].clone()
    message = assert_refused_unchanged(nb1, cfg, state_dict, name)
    assert str(tuple(state_dict[name].shape)) in message  # says what the checkpoint holds


def test_head_is_tied_to_embedding(nb1, setup):
    cfg, hf, state_dict = setup
    model = nb1.Gemma3Model(cfg)
    nb1.load_weights_into_gemma(model, state_dict)
    assert model.out_head.weight is model.tok_emb.weight
    assert model.out_head.weight.data_ptr() == model.tok_emb.weight.data_ptr()
    assert torch.equal(model.out_head.weight, hf.lm_head.weight)  # the reference's (tied) head
    with torch.no_grad():
        model.tok_emb.weight[5] += 1.0
    assert torch.equal(model.out_head.weight[5], hf.lm_head.weight[5] + 1.0)


def test_safetensors_file_round_trip(nb1, setup, tmp_path):
    cfg, _, state_dict = setup
    path = tmp_path / "model.safetensors"
    save_file({name: t.contiguous() for name, t in state_dict.items()}, path)
    assert_loaded(nb1, cfg, path, state_dict)  # a Path
    assert_loaded(nb1, cfg, str(path), state_dict)  # and a str


def test_build_model_loads_an_edited_model_and_keeps_the_first_blocks(nb1, setup, tmp_path):
    cfg, _, state_dict = setup
    save_file({name: t.contiguous() for name, t in state_dict.items()}, tmp_path / "model.safetensors")
    full = nb1.build_model(cfg, tmp_path)
    assert_loaded(nb1, cfg, state_dict, state_dict)  # the same weights as a load the ordinary way
    assert all(torch.equal(param, state_dict[nb1.hf_name_of(name)]) for name, param in full.named_parameters())
    first = nb1.build_model(cfg, tmp_path, n_layers=3)
    assert first.cfg["layer_types"] == cfg["layer_types"][:3] and len(first.blocks) == 3
    full_params = dict(full.named_parameters())
    assert all(torch.equal(param, full_params[name]) for name, param in first.named_parameters())
    window = nb1.build_model(cfg, tmp_path, sliding_window=2)
    assert window.blocks[0].window == 2
