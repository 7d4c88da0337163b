"""Every input is either right or refused where the reader's call enters the notebook's code.

A refusal is a ValueError (FloatingPointError for non-finite logits) whose message names the argument
or the cause: each case asserts the exception type and at most one key phrase, never a whole sentence,
so that the wording can improve without breaking the tests. `generate_text_stream` is a generator, so
its checks may run at the call or at the first `next()`: the tests consume it with `list(...)`.

Unusual but valid input (a config written for the seed notebooks, a checkpoint with a separate head,
a batch through forward, a temperature of 1e-40, stop_ids=None) must give the right result instead.
"""

import ast
import copy
import json
import re

import pytest
import torch
from reference import assert_close_fp32, hf_model, hf_state_dict, tiny_config

from support.notebook_import import NOTEBOOK_1, NOTEBOOK_2

CONTEXT = 16


@pytest.fixture
def model(notebook):
    torch.manual_seed(0)
    return notebook.Gemma3Model(tiny_config(notebook, context_length=CONTEXT)).eval()


@pytest.fixture
def tiny(notebook):
    """The contract's model: tiny_config as it is (context length 96)."""
    torch.manual_seed(0)
    return notebook.Gemma3Model(tiny_config(notebook)).eval()


@pytest.fixture
def tiny2(nb2):
    """Notebook 2's model on tiny_config (context length 96), for the cache's checks."""
    torch.manual_seed(0)
    return nb2.Gemma3Model(tiny_config(nb2)).eval()


P = torch.tensor([[5, 6, 7, 8]])  # the contract's prompt: positions 0..3


def prompt(n):
    return torch.arange(5, 5 + n)[None]  # (1, n) valid ids


def generate(notebook, model, token_ids, max_new_tokens, **kwargs):
    return list(notebook.generate_text_stream(model, token_ids, max_new_tokens, **kwargs))


_TOKENIZERS = {}


@pytest.fixture
def tokenizer(notebook, offline_folder):
    """The real Gemma 3 tokenizer, loaded once per notebook (about a second each)."""
    if notebook.__name__ not in _TOKENIZERS:
        _TOKENIZERS[notebook.__name__] = notebook.Gemma3Tokenizer(offline_folder / "tokenizer.json")
    return _TOKENIZERS[notebook.__name__]


# --- prompts and lengths ---------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
@pytest.mark.parametrize("instruction_tuned", [True, False], ids=["it", "base"])
def test_empty_prompt(notebook, tokenizer, text, instruction_tuned):
    with pytest.raises(ValueError, match=r"(?i)empty"):
        notebook.encode_prompt(tokenizer, text, instruction_tuned)


def test_empty_token_ids(notebook, model):
    with pytest.raises(ValueError, match=r"(?i)empty|no tokens"):
        generate(notebook, model, torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"(?i)empty|no tokens"):
        model(torch.zeros(1, 0, dtype=torch.long))


def test_prompt_longer_than_the_context(notebook, model):
    with pytest.raises(ValueError, match=r"(?i)context"):
        generate(notebook, model, prompt(CONTEXT + 4), 1)
    with pytest.raises(ValueError, match=r"(?i)context"):
        model(prompt(CONTEXT + 4))


@pytest.mark.parametrize("max_new_tokens", [0, -1, -100])
def test_max_new_tokens_below_one(notebook, model, max_new_tokens):
    with pytest.raises(ValueError, match=r"max_new_tokens"):
        generate(notebook, model, prompt(3), max_new_tokens)


def test_prompt_plus_max_new_tokens_past_the_context(notebook, model):
    with pytest.raises(ValueError, match=r"(?i)context"):
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
        with pytest.raises(ValueError, match=r"(?i)integer"):
            call(torch.tensor([[5.0, 6.0]]))
        with pytest.raises(ValueError, match=r"(?i)tensor"):
            call([[5, 6]])


@pytest.mark.parametrize("max_new_tokens", [2.5, "3", True])
def test_max_new_tokens_not_a_whole_number(notebook, model, max_new_tokens):
    with pytest.raises(ValueError, match=r"max_new_tokens"):
        generate(notebook, model, prompt(3), max_new_tokens)


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


def test_forward_batch_equals_each_row_alone(notebook, tiny):
    """Rows of a batch never see each other: (3, t) logits equal each row run alone, up to float32
    rounding (assert_close_fp32: another matrix shape may add the same products in another order)."""
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [200, 3, 3, 17, 0, 256], [42, 41, 40, 39, 38, 37]])
    with torch.no_grad():
        batch = tiny(ids)
        for row in range(ids.shape[0]):
            assert_close_fp32(batch[row:row + 1], tiny(ids[row:row + 1]))


# --- sampling settings -----------------------------------------------------------------------------

def some_logits(seed=0):
    return torch.randn(1, 50, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("setting, value", [("top_k", 0), ("top_k", -1), ("top_p", 0.0), ("top_p", -0.1)])
def test_sampling_settings_out_of_range(notebook, setting, value):
    with pytest.raises(ValueError, match=setting):
        notebook.sample_next_token(some_logits(), temperature=1.0, **{setting: value})


@pytest.mark.parametrize("temperature", [-1, float("inf"), float("nan"), "0.7", None],
                         ids=["negative", "inf", "nan", "a string", "None"])
def test_bad_temperature(notebook, model, temperature):
    """inf used to sample uniformly over the whole vocabulary, ignoring top_k; nan, a string or None
    failed inside torch."""
    with pytest.raises(ValueError, match=r"(?i)temperature"):
        notebook.sample_next_token(some_logits(), temperature=temperature, top_k=1)
    with pytest.raises(ValueError, match=r"(?i)temperature"):
        generate(notebook, model, prompt(3), 2, temperature=temperature, top_k=1)


def test_top_k_not_a_whole_number(notebook, model):
    with pytest.raises(ValueError, match=r"top_k"):
        notebook.sample_next_token(some_logits(), temperature=1.0, top_k=2.5)
    with pytest.raises(ValueError, match=r"top_k"):
        generate(notebook, model, prompt(3), 2, temperature=1.0, top_k=2.5)


def test_tiny_temperature_is_greedy(notebook):
    """1e-40 is a valid temperature: logits / 1e-40 overflow to +-inf, which must still pick the argmax
    (it used to be torch.multinomial's 'probability tensor contains inf, nan or element < 0')."""
    for seed in range(5):
        logits = some_logits(seed)
        token = notebook.sample_next_token(logits, temperature=1e-40, generator=torch.Generator().manual_seed(seed))
        assert token.tolist() == [[logits.argmax().item()]]


@pytest.mark.parametrize("temperature", [1.0, 100.0])
def test_top_k_1_is_the_argmax(notebook, temperature):
    """top_k=1 leaves one candidate, whatever the temperature and the seed."""
    for seed in range(20):
        logits = some_logits(seed)
        token = notebook.sample_next_token(logits, temperature=temperature, top_k=1,
                                           generator=torch.Generator().manual_seed(seed))
        assert token.item() == logits.argmax().item()


@pytest.mark.parametrize("seed", [1.5, 2**70, "7"], ids=["1.5", "2**70", "a string"])
def test_bad_seed(notebook, model, seed):
    with pytest.raises(ValueError, match=r"(?i)seed"):
        generate(notebook, model, prompt(3), 2, temperature=1.0, seed=seed)


def test_stop_ids_none_means_no_stop_ids(notebook, model):
    assert generate(notebook, model, prompt(3), 3, stop_ids=None) == generate(notebook, model, prompt(3), 3)


# --- device and dtype ------------------------------------------------------------------------------

def test_pick_device_cpu_and_auto(notebook):
    assert notebook.pick_device("cpu") == torch.device("cpu")
    assert notebook.pick_device(None).type in ("cpu", "cuda", "mps")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: asking for it is not an error")
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_pick_device_cuda_without_cuda(notebook, name):
    with pytest.raises(ValueError, match=r"not available"):
        notebook.pick_device(name)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS: asking for it is not an error")
def test_pick_device_mps_without_mps(notebook):
    with pytest.raises(ValueError, match=r"not available"):
        notebook.pick_device("mps")


@pytest.mark.parametrize("name", ["nonsense", "gpu"])
def test_pick_device_unknown_name(notebook, name):
    """torch.device itself raises RuntimeError with a list of 20 backends; the notebook should say DEVICE."""
    with pytest.raises(ValueError, match=r"DEVICE"):
        notebook.pick_device(name)


def test_check_dtype_bf16_on_a_gpu_without_it(notebook, monkeypatch):
    """The GPU's answer is simulated: check_dtype asks only torch.cuda.is_bf16_supported, and reads device.type."""
    cuda = torch.device("cuda")  # a device object only: nothing is allocated
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    with pytest.raises(ValueError, match=r"float32"):  # the fix it names
        notebook.check_dtype(cuda, torch.bfloat16)
    assert notebook.check_dtype(cuda, torch.float32) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert notebook.check_dtype(cuda, torch.bfloat16) == torch.bfloat16


def test_check_dtype_cpu(notebook):
    for dtype in (torch.float32, torch.bfloat16):
        assert notebook.check_dtype(torch.device("cpu"), dtype) == dtype


def test_float16_is_refused_with_the_reason(notebook):
    """Gemma 3's residual stream outgrows float16 (measured: every logit NaN on the real weights): the
    config refuses it on every device, and says why."""
    with pytest.raises(ValueError, match=r"(?i)overflow"):
        notebook.Gemma3Model(tiny_config(notebook, dtype=torch.float16))


def test_overflowing_activations_stop_generation(notebook, model):
    """NaN logits are an error naming the cause, never NaN 'tokens' (greedy would pick id 0, <pad>)."""
    with torch.no_grad():
        model.final_norm.weight.fill_(float("inf"))  # inf * 0 somewhere: NaN logits, as an overflow gives
    with pytest.raises(FloatingPointError, match=r"(?i)nan"):
        generate(notebook, model, prompt(3), 2)


# --- the model keeps the config it was built from --------------------------------------------------

def test_config_edited_after_build_changes_nothing(notebook):
    """The model copies cfg when built: editing the caller's dict afterwards changes nothing until the
    model is rebuilt (it used to reach the masks and the embedding scale, which read cfg, but not the
    layers or RoPE tables). Both edits below change the logits of a model built with them."""
    cfg = tiny_config(notebook)
    torch.manual_seed(0)
    model = notebook.Gemma3Model(cfg).eval()
    assert model.cfg is not cfg
    with torch.no_grad():
        before = model(prompt(8))
        cfg["sliding_window"] = 2
        cfg["scale_embeddings"] = False
        assert torch.equal(model(prompt(8)), before)  # the same computation: bit for bit


def test_config_edited_after_build_leaves_the_cache_alone(nb2):
    """The issue's edit: sliding_window 4 -> 64 after the model was built. The cache is still built from
    the model's own copy: cached logits equal the uncached ones computed before the edit (to float32
    rounding, assert_close_fp32: the cache adds the same products in another order)."""
    cfg = tiny_config(nb2)
    torch.manual_seed(0)
    model = nb2.Gemma3Model(cfg).eval()
    assert model.cfg is not cfg
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13]])  # longer than the window of 4
    with torch.no_grad():
        uncached = model(ids)
        cfg["sliding_window"] = 64
        model.setup_cache(16)
        assert_close_fp32(model.prefill(ids[:, :6])[:, -1], uncached[:, 5])
        for position in range(6, 9):
            logits = model.decode(ids[:, position:position + 1], torch.tensor([position]))
            assert_close_fp32(logits[:, -1], uncached[:, position])


# --- the KV cache (notebook 2) ---------------------------------------------------------------------

def test_decode_after_prefill_equals_uncached(tiny2):
    """The right sequence: prefill at 0..3, then decode at 4, 5, 6 (float32 rounding: assert_close_fp32)."""
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
    with torch.no_grad():
        uncached = tiny2(ids)
        tiny2.setup_cache(16)
        assert_close_fp32(tiny2.prefill(ids[:, :4])[:, -1], uncached[:, 3])
        for position in (4, 5, 6):
            logits = tiny2.decode(ids[:, position:position + 1], torch.tensor([position]))
            assert_close_fp32(logits[:, -1], uncached[:, position])


def test_decode_without_a_prefill(tiny2):
    """After reset_cache the cache holds nothing: position 4 has no positions 0..3 to attend to
    (it used to return logits 12.8 off the right ones)."""
    tiny2.setup_cache(16)
    tiny2.reset_cache()
    with pytest.raises(ValueError, match=r"(?i)position|prefill"):  # the wrong position, or the missing step
        tiny2.decode(torch.tensor([[5]]), torch.tensor([4]))


@pytest.mark.parametrize("position", [5, -1], ids=["skips 4", "negative"])
def test_decode_at_the_wrong_position(tiny2, position):
    tiny2.setup_cache(16)
    tiny2.prefill(P)  # positions 0..3: the next is 4
    with pytest.raises(ValueError, match=r"(?i)position"):
        tiny2.decode(torch.tensor([[5]]), torch.tensor([position]))


@pytest.mark.parametrize("ids", [[[5.0]], [[257]], [[-1]]], ids=["float", "vocab_size", "negative"])
def test_decode_bad_token(tiny2, ids):
    """Used to be IndexError 'index out of range in self' from F.embedding."""
    tiny2.setup_cache(16)
    tiny2.prefill(P)
    with pytest.raises(ValueError, match=r"(?i)token"):
        tiny2.decode(torch.tensor(ids), torch.tensor([4]))


def test_decode_at_max_seq_len(tiny2):
    tiny2.setup_cache(5)
    tiny2.prefill(P)
    tiny2.decode(torch.tensor([[9]]), torch.tensor([4]))  # the last slot
    with pytest.raises(ValueError):
        tiny2.decode(torch.tensor([[10]]), torch.tensor([5]))


@pytest.mark.slow  # compiling takes tens of seconds on two cores
@pytest.mark.uses_inductor
def test_compiled_decode_at_max_seq_len(nb2, tiny2):
    """The compiled decode used to skip the check and overwrite slot 0 of the global layers."""
    decode = nb2.compile_decode(tiny2)
    tiny2.setup_cache(6)
    with torch.no_grad():
        tiny2.prefill(P)
        decode(torch.tensor([[9]]), torch.tensor([4]))
        decode(torch.tensor([[10]]), torch.tensor([5]))  # the last slot
        with pytest.raises(ValueError):
            decode(torch.tensor([[11]]), torch.tensor([6]))


@pytest.mark.slow
@pytest.mark.uses_inductor
def test_compiled_decode_out_of_order(nb2, tiny2):
    decode = nb2.compile_decode(tiny2)
    tiny2.setup_cache(6)
    with torch.no_grad():
        tiny2.prefill(P)
        with pytest.raises(ValueError, match=r"(?i)position"):
            decode(torch.tensor([[9]]), torch.tensor([5]))  # skips 4
        decode(torch.tensor([[9]]), torch.tensor([4]))  # the refusal left the cache usable


@pytest.mark.parametrize("max_seq_len", [10.5, 0, 97], ids=["10.5", "0", "past the context"])
def test_setup_cache_bad_max_seq_len(tiny2, max_seq_len):
    with pytest.raises(ValueError, match=r"max_seq_len"):
        tiny2.setup_cache(max_seq_len)


@pytest.mark.parametrize("batch_size", [0, 1.5, -1])
def test_setup_cache_bad_batch_size(tiny2, batch_size):
    with pytest.raises(ValueError, match=r"batch_size"):
        tiny2.setup_cache(16, batch_size=batch_size)


def test_generate_after_a_batch_cache(nb2, tiny2):
    """A cache set up for a batch of two is rebuilt for generation's one row (it used to fail in
    index_copy_): the tokens are those of a fresh model with the same weights."""
    fresh = nb2.Gemma3Model(tiny_config(nb2)).eval()
    fresh.load_state_dict(tiny2.state_dict())
    tiny2.setup_cache(50, batch_size=2)
    tokens = list(nb2.generate_text_stream(tiny2, P, 3))
    assert tokens == list(nb2.generate_text_stream(fresh, P, 3))
    assert len(tokens) == 3


def test_prefill_batch_larger_than_the_cache(tiny2):
    tiny2.setup_cache(16)  # batch_size=1
    with pytest.raises(ValueError, match=r"(?i)batch"):
        tiny2.prefill(torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]]))


def test_prefill_past_the_context_length(tiny2):
    """96 is tiny_config's context length: a larger max_seq_len is not the fix, a shorter prompt is."""
    tiny2.setup_cache(96)
    with pytest.raises(ValueError, match=r"(?i)context") as err:
        tiny2.prefill(prompt(97))
    assert "larger max_seq_len" not in str(err.value).lower()


# --- config ----------------------------------------------------------------------------------------

BAD_CONFIGS = {  # name: (overrides of tiny_config, the key phrase of the message)
    "layer_types too long": (dict(n_layers=5), r"layer_types"),
    "layer_types too short": (dict(layer_types=["sliding_attention", "full_attention"]), r"layer_types"),
    "unknown layer type": (dict(layer_types=["sliding_attention"] * 5 + ["global"]), r"layer_types"),
    "n_heads not a multiple": (dict(n_kv_groups=3), r"n_kv_groups"),
    "odd head_dim": (dict(head_dim=15), r"head_dim"),
    "no window": (dict(sliding_window=0), r"sliding_window"),
    "float emb_dim": (dict(emb_dim=48.0), r"emb_dim"),
    "zero layers": (dict(n_layers=0, layer_types=[]), r"n_layers"),
}

# Values the model used to accept (NaN perplexity, qk_norm="no" acting as True, a warning only) or to
# refuse from deep inside torch; each is refused at Gemma3Model(cfg), naming the key.
BAD_VALUES = [
    ("rope_base", 0, r"rope_base"),
    ("rope_base", -1, r"rope_base"),
    ("rope_local_base", 0, r"rope_local_base"),
    ("qk_norm", "no", r"qk_norm"),
    ("scale_embeddings", 1, r"scale_embeddings"),
    ("query_pre_attn_scalar", -256, r"query_pre_attn_scalar"),
    ("query_pre_attn_scalar", 0, r"query_pre_attn_scalar"),
    ("sliding_window", 4.5, r"sliding_window"),
    ("sliding_window", None, r"sliding_window"),
    ("dtype", "bfloat16", r"dtype"),
    ("dtype", torch.float16, r"float16"),
    ("dtype", torch.int8, r"dtype"),
    ("rms_norm_eps", 0, r"rms_norm_eps"),
]


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_inconsistent_config(notebook, name):
    overrides, pattern = BAD_CONFIGS[name]
    cfg = tiny_config(notebook, **overrides)
    with pytest.raises(ValueError, match=pattern):
        notebook.check_config(cfg)
    with pytest.raises(ValueError, match=pattern):  # the model checks before it builds anything
        notebook.Gemma3Model(cfg)


@pytest.mark.parametrize("key, value, pattern", BAD_VALUES, ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES])
def test_bad_config_value(notebook, key, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        notebook.Gemma3Model(tiny_config(notebook, **{key: value}))


def test_tiny_config_is_consistent(notebook):
    notebook.check_config(tiny_config(notebook))
    notebook.check_config(dict(notebook.GEMMA3_CONFIG_270M, dtype=torch.bfloat16))


def test_config_without_a_dtype(notebook):
    with pytest.raises(ValueError, match=r"dtype"):
        notebook.check_config(notebook.GEMMA3_CONFIG_270M)


def test_config_written_for_the_seed_notebooks(notebook):
    """The seed notebooks' configs have no rms_norm_eps (Gemma 3's 1e-6 applies) and no rope_types (the
    RoPE base follows layer_types)."""
    cfg = tiny_config(notebook)
    cfg.pop("rms_norm_eps", None)
    cfg.pop("rope_types", None)
    torch.manual_seed(0)
    model = notebook.Gemma3Model(cfg).eval()
    assert model.final_norm.eps == 1e-6
    assert all(block.input_layernorm.eps == 1e-6 for block in model.blocks)
    torch.manual_seed(0)
    full = notebook.Gemma3Model(tiny_config(notebook, rms_norm_eps=1e-6)).eval()
    with torch.no_grad():
        assert torch.equal(model(prompt(8)), full(prompt(8)))  # same weights, same arithmetic


# --- perplexity and comparisons --------------------------------------------------------------------

def test_perplexity_of_one_token(notebook, tiny):
    """One token has no next token to predict: the mean over nothing used to be NaN."""
    with pytest.raises(ValueError, match=r"(?i)2 tokens|two"):
        notebook.perplexity(tiny, prompt(1))


def test_perplexity_of_non_finite_logits(notebook, tiny):
    with torch.no_grad():
        tiny.final_norm.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError):
        notebook.perplexity(tiny, prompt(5))


class FixedLogits(torch.nn.Module):
    """A stand-in for the model whose logits are given: (1, t, v), the model's cfg for the id checks."""

    def __init__(self, cfg, logits):
        super().__init__()
        self.cfg, self.logits = cfg, logits

    def forward(self, token_ids):
        return self.logits


@pytest.mark.parametrize(("value", "at_next_token", "refused"), [
    (float("nan"), False, True), (float("inf"), False, True), (float("-inf"), True, True),
    (float("-inf"), False, False),  # probability 0 for a token that did not come next: an exact, finite loss
], ids=["nan", "+inf", "-inf on the next token", "-inf elsewhere"])
def test_token_losses_refuse_every_non_finite_logit_that_changes_a_loss(notebook, tiny, value, at_next_token,
                                                                        refused):
    """token_losses checks the t - 1 losses, not the (t - 1, v) logits: each logit that makes a loss wrong is
    still refused."""
    ids = prompt(5)
    logits = torch.zeros(1, 5, tiny.cfg["vocab_size"])
    next_token = ids[0, 3].item()  # what position 2 predicts
    logits[0, 2, next_token if at_next_token else (next_token + 1) % tiny.cfg["vocab_size"]] = value
    model = FixedLogits(tiny.cfg, logits)
    if refused:
        with pytest.raises(FloatingPointError):
            notebook.token_losses(model, ids)
    else:
        assert torch.isfinite(notebook.token_losses(model, ids)).all()


def test_compare_generations_of_different_lengths(nb2, tiny2):
    """[1, 2, 3] against [1, 2] used to be 'identical for all 2 tokens'."""
    text = nb2.compare_generations(tiny2, P, [1, 2, 3], [1, 2])
    assert not text.startswith("identical"), text
    assert re.search(r"\b3\b", text) and re.search(r"\b2\b", text), text


# --- tokenizer -------------------------------------------------------------------------------------

def test_tokenizer_file_missing(notebook):
    """The path used to be left out: 'No such file or directory (os error 2)'."""
    with pytest.raises(ValueError, match=re.escape("missing/tokenizer.json")):
        notebook.Gemma3Tokenizer("missing/tokenizer.json")


def test_tokenizer_encode_lone_surrogate(notebook, tokenizer):
    with pytest.raises(ValueError, match=r"(?i)text"):
        tokenizer.encode("a\ud800")


@pytest.mark.parametrize("ids, bad", [([-1], r"-1"), ([2, 9259, 300000], r"300,?000")], ids=["-1", "300000"])
def test_tokenizer_decode_bad_id(notebook, tokenizer, ids, bad):
    """-1 used to be an OverflowError, 300000 (past the 262,144 ids) silently dropped."""
    with pytest.raises(ValueError, match=bad):
        tokenizer.decode(ids)


# --- checkpoints -----------------------------------------------------------------------------------

def test_checkpoint_for_another_emb_dim(notebook):
    state_dict = hf_state_dict(hf_model(tiny_config(notebook, emb_dim=32)))  # the model's is 48
    model = notebook.Gemma3Model(tiny_config(notebook))
    with pytest.raises(ValueError, match=r"emb_dim"):
        notebook.load_weights_into_gemma(model, state_dict)


def test_checkpoint_for_another_hidden_dim_copies_nothing(notebook):
    state_dict = hf_state_dict(hf_model(tiny_config(notebook, hidden_dim=64)))  # only the MLPs differ
    model = notebook.Gemma3Model(tiny_config(notebook))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"hidden_dim"):
        notebook.load_weights_into_gemma(model, state_dict)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters()), "partly loaded"


def test_checkpoint_with_another_layer_count(notebook):
    cfg = tiny_config(notebook)
    small = tiny_config(notebook, n_layers=3, layer_types=cfg["layer_types"][:3])
    model = notebook.Gemma3Model(cfg)
    with pytest.raises(ValueError, match=r"n_layers"):
        notebook.load_weights_into_gemma(model, hf_state_dict(hf_model(small)))


def test_checkpoint_with_a_separate_head(notebook, capsys):
    """Some checkpoints store lm_head.weight beside the embedding: it loads into an untied head, as the
    seed's loader does, and the loader says so."""
    cfg = tiny_config(notebook)
    state_dict = hf_state_dict(hf_model(cfg))
    lm_head = torch.randn(cfg["vocab_size"], cfg["emb_dim"], generator=torch.Generator().manual_seed(1))
    state_dict["lm_head.weight"] = lm_head
    model = notebook.Gemma3Model(cfg).eval()
    notebook.load_weights_into_gemma(model, state_dict)
    assert model.out_head.weight is not model.tok_emb.weight
    assert torch.equal(model.out_head.weight, lm_head)
    assert torch.equal(model.tok_emb.weight, state_dict["model.embed_tokens.weight"])
    assert re.search(r"(?i)untied", capsys.readouterr().out)


def test_checkpoint_into_an_int8_model(nb2):
    """Used to blame n_layers: the int8 model has no float weights to load into."""
    cfg = tiny_config(nb2)
    state_dict = hf_state_dict(hf_model(cfg))
    model = nb2.quantize_int8_(nb2.Gemma3Model(cfg).eval())
    with pytest.raises(ValueError, match=r"int8") as err:
        nb2.load_weights_into_gemma(model, state_dict)
    assert "n_layers" not in str(err.value)


# --- every definition on its own -------------------------------------------------------------------

def export_cells(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    return ["".join(cell["source"]) for cell in notebook["cells"]
            if cell["cell_type"] == "code" and "export" in cell.get("metadata", {}).get("tags", [])]


def top_level_definitions(path):
    """(notebook file name, definition name, ast node) of each top-level def/class in the export cells."""
    return [(path.name, node.name, node) for source in export_cells(path) for node in ast.parse(source).body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]


def imports_namespace(path):
    """A namespace holding only the imports of the notebook's first export cell (the one with `import torch`)."""
    first = next(source for source in export_cells(path) if re.search(r"^import torch$", source, re.M))
    namespace = {}
    exec(compile(first, f"{path.name}:imports", "exec"), namespace)
    return namespace


DEFINITIONS = top_level_definitions(NOTEBOOK_1) + top_level_definitions(NOTEBOOK_2)


@pytest.mark.parametrize("notebook_name, name, node", DEFINITIONS, ids=[f"{nb}:{name}" for nb, name, _ in DEFINITIONS])
def test_each_definition_on_its_own(notebook_name, name, node):
    """Tooling that imports a notebook's definitions one by one (as the seed repository's does) needs each
    def/class to be definable without module constants: they may be used inside function bodies, not in
    default arguments, decorators or class bodies."""
    path = NOTEBOOK_1 if notebook_name == NOTEBOOK_1.name else NOTEBOOK_2
    namespace = imports_namespace(path)
    module = ast.Module(body=[copy.deepcopy(node)], type_ignores=[])
    exec(compile(module, f"{notebook_name}:{name}", "exec"), namespace)
    assert name in namespace
