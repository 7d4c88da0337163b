"""The config and the converted weights against sources that share nothing with this project's code.

The other reference tests build transformers from the notebooks' own GEMMA3_CONFIG_270M and load the
project's own converted file on both sides, so a wrong config value or a conversion bug would pass
them. Here the architecture comes from the GGUF file's own metadata (written by llama.cpp's
converter from Google's config) and from transformers' Gemma 3 defaults, and the weights from
transformers' own GGUF loader.
"""

import pytest
import torch
from reference import gguf_parsed_once
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # the GGUF's parse (the gguf_reader fixture) and transformers' loader: tens of seconds


@pytest.fixture(scope="module")
def gguf_metadata(gguf_reader):
    fields = {name: field.contents() for name, field in gguf_reader.fields.items() if name.startswith("gemma3.")}
    fields["vocab_size"] = len(gguf_reader.fields["tokenizer.ggml.tokens"].data)  # one entry per token
    return fields


def test_config_matches_the_gguf_metadata(nb1, gguf_metadata):
    cfg = nb1.GEMMA3_CONFIG_270M
    gguf = {
        "vocab_size": gguf_metadata["vocab_size"],
        "context_length": gguf_metadata["gemma3.context_length"],
        "emb_dim": gguf_metadata["gemma3.embedding_length"],
        "n_layers": gguf_metadata["gemma3.block_count"],
        "n_heads": gguf_metadata["gemma3.attention.head_count"],
        "n_kv_groups": gguf_metadata["gemma3.attention.head_count_kv"],
        "head_dim": gguf_metadata["gemma3.attention.key_length"],
        "hidden_dim": gguf_metadata["gemma3.feed_forward_length"],
        "sliding_window": gguf_metadata["gemma3.attention.sliding_window"],
        "rope_base": gguf_metadata["gemma3.rope.freq_base"],  # the global layers' base
    }
    assert {key: cfg[key] for key in gguf} == gguf
    assert gguf_metadata["gemma3.attention.value_length"] == cfg["head_dim"]
    # The GGUF stores eps as a float32: 1e-6 reads back as 9.99999997e-07, within float32's relative
    # rounding (2**-24 = 6e-8); a wrong eps (1e-5, 1e-7) is off by 9x or more.
    assert cfg["rms_norm_eps"] == pytest.approx(gguf_metadata["gemma3.attention.layer_norm_rms_epsilon"], rel=2**-24)


def test_what_the_gguf_omits_matches_transformers_defaults(nb1):
    """The GGUF stores neither the local RoPE base nor the layer pattern (llama.cpp hard-codes them).

    transformers' Gemma3TextConfig defaults carry the values shared by every Gemma 3 size.
    """
    from transformers import Gemma3TextConfig

    cfg = nb1.GEMMA3_CONFIG_270M
    defaults = Gemma3TextConfig(num_hidden_layers=cfg["n_layers"])
    ours = {key: cfg[key] for key in ("layer_types", "rope_local_base", "rope_base", "query_pre_attn_scalar")}
    assert ours | {"layer_types": list(cfg["layer_types"])} == {
        "layer_types": defaults.layer_types,
        "rope_local_base": defaults.rope_parameters["sliding_attention"]["rope_theta"],
        "rope_base": defaults.rope_parameters["full_attention"]["rope_theta"],
        "query_pre_attn_scalar": defaults.query_pre_attn_scalar,
    }


def compare_with_transformers_gguf_loader(converted: dict, gguf_path, gguf_reader) -> None:
    """Every converted tensor against transformers' own dequantization of the same GGUF (float32)."""
    from transformers import Gemma3ForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    with gguf_parsed_once(gguf_reader, gguf_path):
        model = Gemma3ForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    reference = {name: value for name, value in model.state_dict().items() if name != "lm_head.weight"}
    assert sorted(converted) == sorted(reference)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied: no extra tensor
    wrong = {}
    for name, ours in converted.items():
        ref = reference[name]
        assert ours.shape == ref.shape, name
        # The conversion rounds float32 values to bfloat16 (8 significant bits, round to nearest):
        # |bf16(x) - x| <= half a unit in the last place <= 2**-8 * |x|. Both sides dequantize with
        # the same gguf code, so nothing else may differ; a missing norm offset is off by 1.0 and a
        # swapped tensor by about its whole size.
        excess = ((ours.float() - ref).abs() - 2**-8 * ref.abs()).max().item()
        if excess > 0:
            wrong[name] = f"exceeds bf16 rounding by up to {excess:.3g}"
    assert not wrong, f"{len(wrong)} of {len(converted)} tensors differ from transformers' GGUF loader: {wrong}"


def test_converted_tensors_equal_transformers_gguf_loader(offline_folder, gguf_path, gguf_reader):
    converted = load_file(offline_folder / "model.safetensors")
    assert len(converted) == 236 and all(value.dtype == torch.bfloat16 for value in converted.values())
    compare_with_transformers_gguf_loader(converted, gguf_path, gguf_reader)
