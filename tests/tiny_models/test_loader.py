"""The weight loader accounts for every parameter, and bad inputs fail early with a message naming the cause.

Tiny fp32 config; the checkpoints are transformers' Gemma3ForCausalLM state dicts (random weights),
so expected values come from transformers. The real 236-tensor checkpoint is checked in
test_real_weights.py.
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


@pytest.mark.parametrize(("change", "tensor"), [
    (dict(emb_dim=64), "model.embed_tokens.weight"),
    (dict(hidden_dim=96), "mlp.gate_proj.weight"),
    (dict(head_dim=32), "self_attn.q_proj.weight"),
])
def test_checkpoint_of_another_size(nb1, change, tensor):
    cfg = tiny_config(nb1)
    other = hf_state_dict(hf_model(tiny_config(nb1, **change)))
    with pytest.raises(ValueError, match=re.escape(tensor)) as err:
        nb1.load_weights_into_gemma(nb1.Gemma3Model(cfg), other)
    message = str(err.value)
    assert "config" in message and "another model size" in message, message


def test_checkpoint_with_more_layers(nb1):
    cfg = tiny_config(nb1)
    other_cfg = tiny_config(nb1, n_layers=7, layer_types=cfg["layer_types"] + ["sliding_attention"])
    with pytest.raises(ValueError, match=re.escape("model.layers.6.")) as err:
        nb1.load_weights_into_gemma(nb1.Gemma3Model(cfg), hf_state_dict(hf_model(other_cfg)))
    assert "n_layers" in str(err.value)


def test_safetensors_file_round_trip(nb1, setup, tmp_path):
    cfg, _, state_dict = setup
    path = tmp_path / "model.safetensors"
    save_file({name: t.contiguous() for name, t in state_dict.items()}, path)
    checkpoint = nb1.SafetensorsFile(path)
    assert set(checkpoint) == set(state_dict) and len(checkpoint) == len(state_dict)
    assert_loaded(nb1, cfg, checkpoint, state_dict)


@pytest.mark.parametrize("damage", ["truncated", "one byte short", "text", "empty", "missing"])
def test_safetensors_file_rejects_a_bad_file(nb1, setup, tmp_path, damage):
    _, _, state_dict = setup
    good = tmp_path / "good.safetensors"
    save_file({name: t.contiguous() for name, t in state_dict.items()}, good)
    data = good.read_bytes()
    path = tmp_path / "model.safetensors"
    contents = {"truncated": data[: len(data) // 2], "one byte short": data[:-1],
                "text": b"<html>404 Not Found</html>", "empty": b""}
    if damage in contents:
        path.write_bytes(contents[damage])
    with pytest.raises(ValueError) as err:
        nb1.SafetensorsFile(path)
    message = str(err.value)
    assert "model.safetensors" in message, message
    if damage == "missing":
        assert "No weights file" in message and "prepare_weights" in message, message  # says how to get one
    else:
        assert "not a readable safetensors file" in message and "delete it and run again" in message, message


@pytest.mark.parametrize(("edit", "key"), [
    (dict(n_layers=12), "layer_types"),  # fewer layers, layer pattern not shortened
    (dict(layer_types=["sliding_attention"] * 17 + ["global_attention"]), "global_attention"),
    (dict(n_heads=4, n_kv_groups=3), "n_kv_groups"),
])
def test_check_config_names_the_inconsistent_key(nb1, edit, key):
    # Edits a reader might make to the real 270M config; check_config runs before any weight is built.
    cfg = dict(nb1.GEMMA3_CONFIG_270M, dtype=torch.bfloat16, **edit)
    with pytest.raises(ValueError, match=re.escape(key)):
        nb1.Gemma3Model(cfg)


def test_check_config_accepts_the_real_config(nb1):
    # so the failures above come from the edits alone
    nb1.check_config(dict(nb1.GEMMA3_CONFIG_270M, dtype=torch.bfloat16))
