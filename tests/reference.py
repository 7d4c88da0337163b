"""Hugging Face transformers as the independent reference: build it from one of our configs.

transformers is a test-only dependency; the notebooks never import it.
"""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_config(nb, **overrides):
    """A small fp32 config with sliding and global layers and a window of a few tokens."""
    cfg = dict(
        nb.GEMMA3_CONFIG_270M,
        vocab_size=257,
        context_length=96,
        emb_dim=48,
        n_heads=4,
        n_kv_groups=2,  # two KV heads, so the grouping of query heads is exercised
        head_dim=16,
        hidden_dim=80,
        n_layers=6,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
        sliding_window=4,
        dtype=torch.float32,
    )
    cfg.update(overrides)
    return cfg


def random_ids(cfg, length, seed):
    """(1, length) token ids drawn from cfg's vocabulary, the same for the same seed."""
    return torch.randint(0, cfg["vocab_size"], (1, length), generator=torch.Generator().manual_seed(seed))


def notebook_model(nb, dtype, folder=None):
    """Either notebook's model in `dtype`, with the real weights of a converted `folder` when given."""
    cfg = dict(nb.GEMMA3_CONFIG_270M, dtype=dtype)
    model = nb.Gemma3Model(cfg).eval()
    if folder is not None:
        nb.load_weights_into_gemma(model, cfg, nb.SafetensorsFile(folder / "model.safetensors"))
    return model


def hf_config(cfg):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        vocab_size=cfg["vocab_size"],
        max_position_embeddings=cfg["context_length"],
        hidden_size=cfg["emb_dim"],
        num_attention_heads=cfg["n_heads"],
        num_key_value_heads=cfg["n_kv_groups"],
        head_dim=cfg["head_dim"],
        intermediate_size=cfg["hidden_dim"],
        num_hidden_layers=cfg["n_layers"],
        layer_types=list(cfg["layer_types"]),
        sliding_window=cfg["sliding_window"],
        rope_theta=cfg["rope_base"],  # older spellings, which transformers 5 still converts:
        rope_local_base_freq=cfg["rope_local_base"],  # so this runs on transformers 4.5x too
        query_pre_attn_scalar=cfg["query_pre_attn_scalar"],
        rms_norm_eps=cfg["rms_norm_eps"],
        hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=True,
        attn_implementation="eager",
    )


def hf_model(cfg, seed=0):
    """A reference Gemma3ForCausalLM with random weights, norm weights randomised too."""
    from transformers import Gemma3ForCausalLM

    torch.manual_seed(seed)
    return randomize_norms_(Gemma3ForCausalLM(hf_config(cfg)).to(cfg["dtype"]).eval())


def randomize_norms_(model):
    """Norm weights are zeros at init: randomise them (in place) so that (1 + w) matters."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(0.0, 0.5)
    return model


def hf_model_from_folder(cfg, folder, work_dir, attn_implementation="eager"):
    """transformers' own loading path (`from_pretrained`) over the weights of a Hugging Face-layout folder.

    The folder holds model.safetensors but no config.json, so `hf_config(cfg)` is written into
    `work_dir` beside a link to the weights. `from_pretrained(dtype=...)` ties the head, and in bf16
    keeps the RoPE inverse frequencies in float32 as a real bf16 checkpoint load does (building in
    fp32 and calling `.to(torch.bfloat16)`, as `hf_model` does, rounds them to bf16 too).
    """
    from transformers import Gemma3ForCausalLM
    from transformers.utils import logging

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    hf_config(cfg).save_pretrained(work_dir)
    link = work_dir / "model.safetensors"
    if not link.exists():
        link.symlink_to(Path(folder).resolve() / "model.safetensors")
    logging.disable_progress_bar()
    model, info = Gemma3ForCausalLM.from_pretrained(work_dir, dtype=cfg["dtype"],
                                                    attn_implementation=attn_implementation, output_loading_info=True)
    problems = {key: value for key, value in info.items() if value}
    if problems:  # a reference with randomly initialised tensors would be no reference
        raise RuntimeError(f"transformers did not load every tensor of {folder}: {problems}")
    return model.eval()


def hf_state_dict(model):
    """The reference's weights under checkpoint names (the tied head is not stored)."""
    return {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}


def hf_masks(hf, cfg, t):
    """The reference's (t, t) masks per layer type as bool, True = may attend."""
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    kwargs = dict(config=hf.config, inputs_embeds=torch.zeros(1, t, cfg["emb_dim"]), attention_mask=None,
                  cache=None, position_ids=torch.arange(t)[None], allow_is_causal_skip=False)
    masks = {"full_attention": create_causal_mask(**kwargs),
             "sliding_attention": create_sliding_window_causal_mask(**kwargs)}
    return {kind: (m if m.dtype == torch.bool else m == 0)[0, 0] for kind, m in masks.items()}
