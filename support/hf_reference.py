"""Hugging Face transformers built from one of our configs: the independent reference.

Used by the tests and by support/benchmark.py's transformers baseline. The notebooks
never import transformers.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def link_or_copy(source: Path, target: Path) -> None:
    """Make `target` hold `source`'s bytes: a hard link (instant), or a copy where links cannot be made."""
    if target.exists():
        return
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(source, target)


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
        rope_theta=cfg["rope_base"],  # older spellings, which transformers 5 still converts into
        rope_local_base_freq=cfg["rope_local_base"],  # its rope_parameters per layer type
        query_pre_attn_scalar=cfg["query_pre_attn_scalar"],
        rms_norm_eps=cfg["rms_norm_eps"],
        hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=True,
        attn_implementation="eager",
    )


def hf_model_from_folder(cfg, folder, work_dir, attn_implementation="eager"):
    """transformers' own loading path (`from_pretrained`) over the weights of a Hugging Face-layout folder.

    The folder holds model.safetensors but no config.json, so `hf_config(cfg)` is written into
    `work_dir` beside a hard link to the weights (a copy where links cannot be made; never a symlink).
    `from_pretrained(dtype=...)` ties the head, and in bf16
    keeps the RoPE inverse frequencies in float32 as a real bf16 checkpoint load does (building in
    fp32 and calling `.to(torch.bfloat16)`, as `hf_model` does, rounds them to bf16 too).
    """
    from transformers import Gemma3ForCausalLM
    from transformers.utils import logging

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    hf_config(cfg).save_pretrained(work_dir)
    link_or_copy(Path(folder) / "model.safetensors", work_dir / "model.safetensors")
    logging.disable_progress_bar()
    model, info = Gemma3ForCausalLM.from_pretrained(work_dir, dtype=cfg["dtype"],
                                                    attn_implementation=attn_implementation, output_loading_info=True)
    problems = {key: value for key, value in info.items() if value}
    if problems:  # a reference with randomly initialised tensors would be no reference
        raise RuntimeError(f"transformers did not load every tensor of {folder}: {problems}")
    return model.eval()
