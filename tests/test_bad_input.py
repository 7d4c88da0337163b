"""Bad input fails early with a ValueError that names the cause, never with a trace from deep in torch.

Every case asserts the exception type and key words of the message. `generate_text_stream` is a
generator, so its checks run on the first `next()`: the tests consume it with `list(...)`.
"""

import pytest
import torch
from reference import hf_model, hf_state_dict, tiny_config

CONTEXT = 16


@pytest.fixture
def model(notebook):
    torch.manual_seed(0)
    return notebook.Gemma3Model(tiny_config(notebook, context_length=CONTEXT)).eval()


def prompt(n):
    return torch.arange(5, 5 + n)[None]  # (1, n) valid ids


def generate(notebook, model, token_ids, max_new_tokens, **kwargs):
    return list(notebook.generate_text_stream(model, token_ids, max_new_tokens, **kwargs))


# --- prompts and lengths ---------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
@pytest.mark.parametrize("instruction_tuned", [True, False], ids=["it", "base"])
def test_empty_prompt(notebook, offline_folder, text, instruction_tuned):
    tokenizer = notebook.Gemma3Tokenizer(offline_folder / "tokenizer.json")
    with pytest.raises(ValueError, match=r"(?i)empty"):
        notebook.encode_prompt(tokenizer, text, instruction_tuned)


def test_empty_token_ids(notebook, model):
    with pytest.raises(ValueError, match=r"(?i)empty|no tokens"):
        generate(notebook, model, torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"(?i)empty|no tokens"):
        model(torch.zeros(1, 0, dtype=torch.long))


def test_prompt_longer_than_the_context(notebook, model):
    with pytest.raises(ValueError, match=rf"(?i)context length.*{CONTEXT}"):
        generate(notebook, model, prompt(CONTEXT + 4), 1)
    with pytest.raises(ValueError, match=rf"(?i){CONTEXT + 4} tokens.*context length.*{CONTEXT}"):
        model(prompt(CONTEXT + 4))


@pytest.mark.parametrize("max_new_tokens", [0, -1, -100])
def test_max_new_tokens_below_one(notebook, model, max_new_tokens):
    with pytest.raises(ValueError, match=rf"max_new_tokens.*at least 1.*{max_new_tokens}"):
        generate(notebook, model, prompt(3), max_new_tokens)


def test_prompt_plus_max_new_tokens_past_the_context(notebook, model):
    with pytest.raises(ValueError, match=r"(?i)prompt \(10 tokens\).*max_new_tokens \(7\).*context length \(16\)"):
        generate(notebook, model, prompt(10), 7)
    assert len(generate(notebook, model, prompt(10), 6)) == 6  # exactly full is allowed


# --- token ids -------------------------------------------------------------------------------------

BAD_IDS = {"negative": [[5, -1, 7]], "vocab_size": [[5, 257, 7]], "far too large": [[5, 10**6]]}


@pytest.mark.parametrize("name", list(BAD_IDS))
def test_token_ids_out_of_range(notebook, model, name):
    ids = torch.tensor(BAD_IDS[name])
    with pytest.raises(ValueError, match=r"0\.\.256"):  # names the valid range for vocab_size 257
        model(ids)
    with pytest.raises(ValueError, match=r"0\.\.256"):
        generate(notebook, model, ids, 2)


def test_token_ids_as_floats_or_a_list(notebook, model):
    for call in (model, lambda ids: generate(notebook, model, ids, 2)):
        with pytest.raises(ValueError, match=r"integers, not torch.float32.*ids.long\(\)"):
            call(torch.tensor([[5.0, 6.0]]))
        with pytest.raises(ValueError, match=r"torch tensor.*not a list.*torch.tensor\(\[ids\]\)"):
            call([[5, 6]])


@pytest.mark.parametrize("max_new_tokens", [2.5, "3", True])
def test_max_new_tokens_not_a_whole_number(notebook, model, max_new_tokens):
    with pytest.raises(ValueError, match=r"max_new_tokens must be a whole number"):
        generate(notebook, model, prompt(3), max_new_tokens)


def test_negative_temperature(notebook, model):
    with pytest.raises(ValueError, match=r"temperature must be 0 \(greedy\) or positive, not -1"):
        generate(notebook, model, prompt(3), 2, temperature=-1)


def test_token_ids_at_the_edges_are_fine(notebook, model):
    assert model(torch.tensor([[0, 256]])).shape == (1, 2, 257)


@pytest.mark.parametrize("shape", [(3,), (1, 1, 3)], ids=["1-D, no batch axis", "3-D"])
def test_token_ids_of_the_wrong_shape(notebook, model, shape):
    ids = torch.arange(5, 8).reshape(shape)
    with pytest.raises(ValueError, match=r"(?i)shape|batch|2-d|dimension"):
        model(ids)
    with pytest.raises(ValueError, match=r"(?i)shape|batch|2-d|dimension"):
        generate(notebook, model, ids, 2)


def test_generate_refuses_a_batch(notebook, model):
    """generate_text_stream yields one id per step: a batch of two prompts must be refused up front."""
    with pytest.raises(ValueError, match=r"(?i)batch"):
        generate(notebook, model, torch.tensor([[5, 6], [7, 8]]), 2)


# --- sampling settings -----------------------------------------------------------------------------

@pytest.mark.parametrize("setting, value", [("top_k", 0), ("top_k", -1), ("top_p", 0.0), ("top_p", -0.1)])
def test_sampling_settings_out_of_range(notebook, setting, value):
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=setting):
        notebook.sample_next_token(logits, temperature=1.0, **{setting: value})


# --- device and dtype ------------------------------------------------------------------------------

def test_pick_device_cpu_and_auto(notebook):
    assert notebook.pick_device("cpu") == torch.device("cpu")
    assert notebook.pick_device(None).type in ("cpu", "cuda", "mps")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: asking for it is not an error")
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_pick_device_cuda_without_cuda(notebook, name):
    with pytest.raises(ValueError, match=rf"{name}.*not available.*DEVICE"):
        notebook.pick_device(name)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS: asking for it is not an error")
def test_pick_device_mps_without_mps(notebook):
    with pytest.raises(ValueError, match=r"mps.*not available"):
        notebook.pick_device("mps")


@pytest.mark.parametrize("name", ["nonsense", "gpu"])
def test_pick_device_unknown_name(notebook, name):
    """torch.device itself raises RuntimeError with a list of 20 backends; the notebook should say DEVICE."""
    with pytest.raises(ValueError, match=rf"{name}.*DEVICE"):
        notebook.pick_device(name)


def test_check_dtype_unknown(notebook):
    with pytest.raises(ValueError, match=r"DTYPE.*float32.*int8"):
        notebook.check_dtype(torch.device("cpu"), torch.int8)


def test_check_dtype_bf16_on_a_gpu_without_it(notebook, monkeypatch):
    """The GPU's answer is simulated: check_dtype asks only torch.cuda.is_bf16_supported, and reads device.type."""
    cuda = torch.device("cuda")  # a device object only: nothing is allocated
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    with pytest.raises(ValueError, match=r"(?i)bfloat16.*DTYPE = torch.float32"):
        notebook.check_dtype(cuda, torch.bfloat16)
    assert notebook.check_dtype(cuda, torch.float32) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert notebook.check_dtype(cuda, torch.bfloat16) == torch.bfloat16


def test_check_dtype_cpu(notebook):
    for dtype in (torch.float32, torch.bfloat16):
        assert notebook.check_dtype(torch.device("cpu"), dtype) == dtype


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_float16_is_refused_with_the_reason(notebook, device):
    """Gemma 3's residual stream outgrows float16 (measured: every logit NaN on the real weights)."""
    with pytest.raises(ValueError, match=r"float16 overflows.*65,504.*NaN.*DTYPE = torch.bfloat16"):
        notebook.check_dtype(torch.device(device), torch.float16)


def test_overflowing_activations_stop_generation(notebook, model):
    """NaN logits are an error naming the cause, never NaN 'tokens' (greedy would pick id 0, <pad>)."""
    with torch.no_grad():
        model.final_norm.weight.fill_(float("inf"))  # inf * 0 somewhere: NaN logits, as an overflow gives
    with pytest.raises(FloatingPointError, match=r"NaN or infinite.*overflowed.*bfloat16"):
        generate(notebook, model, prompt(3), 2)


def test_config_edited_after_the_model_was_built(notebook, model):
    """An edit would reach some parts (the masks read cfg) but not others (layers, RoPE tables, cache)."""
    model.cfg["sliding_window"] = 2
    with pytest.raises(ValueError, match=r"cfg was edited.*sliding_window: 4 -> 2.*Gemma3Model\(cfg\)"):
        model(prompt(3))
    with pytest.raises(ValueError, match=r"cfg was edited.*sliding_window: 4 -> 2"):
        generate(notebook, model, prompt(3), 2)
    model.cfg["sliding_window"] = 4
    assert len(generate(notebook, model, prompt(3), 2)) == 2  # put back, it runs again


def test_kv_cache_config_edited_after_setup_cache(nb2):
    model = nb2.Gemma3Model(tiny_config(nb2, context_length=CONTEXT)).eval()
    model.setup_cache(12)
    model.prefill(prompt(3))
    model.cfg["sliding_window"] = 64  # the edit: the cache keeps its 4-slot rings
    with pytest.raises(ValueError, match=r"cfg was edited.*sliding_window: 4 -> 64"):
        model.decode(torch.tensor([[5]]), torch.tensor([3]))
    for call in (lambda: model.setup_cache(12), lambda: model.prefill(prompt(3))):
        with pytest.raises(ValueError, match=r"cfg was edited"):
            call()


# --- config and checkpoint -------------------------------------------------------------------------

BAD_CONFIGS = {
    "layer_types too long": (dict(n_layers=5), r"layer_types has 6 entries but n_layers is 5"),
    "layer_types too short": (dict(layer_types=["sliding_attention", "full_attention"]),
                              r"layer_types has 2 entries but n_layers is 6"),
    "unknown layer type": (dict(layer_types=["sliding_attention"] * 5 + ["global"]),
                           r"layer_types may hold only .*sliding_attention.*full_attention.*global"),
    "n_heads not a multiple": (dict(n_kv_groups=3), r"n_heads \(4\) must be a multiple of n_kv_groups \(3\)"),
    "odd head_dim": (dict(head_dim=15), r"head_dim \(15\) must be even"),
    "no window": (dict(sliding_window=0), r"sliding_window \(0\) must be positive"),
    "float emb_dim": (dict(emb_dim=48.0), r"emb_dim must be a positive integer"),
    "zero layers": (dict(n_layers=0, layer_types=[]), r"n_layers must be a positive integer"),
}


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_inconsistent_config(notebook, name):
    overrides, pattern = BAD_CONFIGS[name]
    cfg = tiny_config(notebook, **overrides)
    with pytest.raises(ValueError, match=pattern):
        notebook.check_config(cfg)
    with pytest.raises(ValueError, match=pattern):  # the model checks before it builds anything
        notebook.Gemma3Model(cfg)


def test_tiny_config_is_consistent(notebook):
    notebook.check_config(tiny_config(notebook))
    notebook.check_config(dict(notebook.GEMMA3_CONFIG_270M, dtype=torch.bfloat16))


def test_config_without_a_dtype(notebook):
    with pytest.raises(ValueError, match=r"lacks \['dtype'\].*dict\(GEMMA3_CONFIG_270M, dtype=DTYPE\)"):
        notebook.check_config(notebook.GEMMA3_CONFIG_270M)


def test_checkpoint_for_another_emb_dim(notebook):
    cfg = tiny_config(notebook)  # emb_dim 48
    state_dict = hf_state_dict(hf_model(tiny_config(notebook, emb_dim=32)))
    model = notebook.Gemma3Model(cfg)
    with pytest.raises(ValueError, match=r"Tensor model\.\S+ has shape .*32.*emb_dim"):
        notebook.load_weights_into_gemma(model, cfg, state_dict)


def test_checkpoint_for_another_hidden_dim_copies_nothing(notebook):
    cfg = tiny_config(notebook)
    state_dict = hf_state_dict(hf_model(tiny_config(notebook, hidden_dim=64)))  # only the MLPs differ
    model = notebook.Gemma3Model(cfg)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"Tensor model\.layers\.\d+\.mlp\.\w+\.weight has shape.*hidden_dim"):
        notebook.load_weights_into_gemma(model, cfg, state_dict)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters()), "partly loaded"


def test_checkpoint_with_another_layer_count(notebook):
    cfg = tiny_config(notebook)
    small = tiny_config(notebook, n_layers=3, layer_types=cfg["layer_types"][:3])
    model = notebook.Gemma3Model(cfg)
    with pytest.raises(ValueError, match=r"missing \d+ tensor\(s\), e\.g\. \['model\.layers\.3\..*n_layers"):
        notebook.load_weights_into_gemma(model, cfg, hf_state_dict(hf_model(small)))
