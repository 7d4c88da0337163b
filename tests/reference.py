"""Hugging Face transformers as the independent reference: build it from one of our configs.

transformers is a test-only dependency; the notebooks never import it.
"""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path

import pytest
import torch

from support.hf_reference import hf_config

PASSAGE = Path(__file__).resolve().parent / "data" / "passage.txt"  # English, longer than the 512-token window
FP32_EPS = torch.finfo(torch.float32).eps  # 1.19e-7: one unit in the last place (ulp) at 1.0


def assert_close_fp32(ours, ref, ulps=32):
    """ours equals ref up to float32 rounding: max |ours - ref| <= ulps * eps * max(|ref|, 1).

    Two float32 computations of one function that add the same products in another order (another
    kernel, another instruction set, a cache instead of the whole sequence) differ by a few ulps of
    their largest values: measured at most 2.5 (2.3 under ATEN_CPU_CAPABILITY=default) on the tiny
    config's logits of up to 50. 32 ulps leaves 10x room for other CPUs' kernels and is still 2e-4
    on logits of 50, while real mistakes move them far more (measured on the tiny model's logits): a
    window one too small or large by ~7, the global RoPE base in local layers by 0.2, an RMSNorm eps of
    1e-5 instead of 1e-6 by 0.013.
    """
    scale = max(ref.abs().max().item(), 1.0)
    diff = (ours - ref).abs().max().item()
    assert diff <= ulps * FP32_EPS * scale, (
        f"max abs diff {diff:.2e} = {diff / (FP32_EPS * scale):.1f} ulps of the largest value {scale:.3g} "
        f"(allowed {ulps})")


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


def seeded_randn(*shape, seed=0):
    """Standard normal values of `shape`, the same for the same seed whatever ran before."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


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


def hf_state_dict(model):
    """The reference's weights under checkpoint names (the tied head is not stored)."""
    return {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}


def hf_masks(hf, cfg, t):
    """The reference's (t, t) masks per layer type as bool, True = may attend."""
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    # transformers 5.24 renamed the mask functions' `past_key_values` to `cache`: accept either.
    cache = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"
    kwargs = {"config": hf.config, "inputs_embeds": torch.zeros(1, t, cfg["emb_dim"]), "attention_mask": None,
              cache: None, "position_ids": torch.arange(t)[None], "allow_is_causal_skip": False}
    masks = {"full_attention": create_causal_mask(**kwargs),
             "sliding_attention": create_sliding_window_causal_mask(**kwargs)}
    return {kind: (m if m.dtype == torch.bool else m == 0)[0, 0] for kind, m in masks.items()}


@contextlib.contextmanager
def gguf_parsed_once(reader, path):
    """While it lasts, transformers' GGUF loading (`from_pretrained(..., gguf_file=...)`) gets `reader`, the
    session's gguf.GGUFReader of `path`, instead of building its own (it builds one per call, twice per model,
    and each parses the 262,144-token vocabulary again: about 20 s here). The same class of the same package over
    the same bytes, which transformers only reads: its results are unchanged. Other files are parsed as before."""
    import gguf

    parse = gguf.GGUFReader

    def reader_of(file, *args, **kwargs):
        if Path(file).resolve() == Path(path).resolve() and not args and not kwargs:
            return reader
        return parse(file, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "GGUFReader", reader_of)  # transformers imports it from gguf at each call
        yield
