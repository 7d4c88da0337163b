"""Unusual but valid input gives the right result: a config written for the seed notebooks, its three-argument
loader, a checkpoint with a separate head, a path or our own state dict where a checkpoint is expected, a batch
through forward, a temperature of 1e-40, stop_ids=None or one id, (v,) and (b, t, v) logits, a prompt the cache
set up can't hold, int32 ids, a model moved to another dtype, and every definition imported on its own. (Every refusal
is in tests/tiny_models/test_entry_points.py.)
"""

import ast
import copy
import json
import re
from types import SimpleNamespace

import pytest
import torch
from reference import assert_close_fp32, hf_model, hf_state_dict, tiny_config

from support.notebook_import import NOTEBOOK_1, NOTEBOOK_2, NOTEBOOK_3

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


def test_prompt_plus_max_new_tokens_past_the_context(notebook, model):
    with pytest.raises(ValueError, match=r"(?i)context"):
        generate(notebook, model, prompt(10), 7)
    assert len(generate(notebook, model, prompt(10), 6)) == 6  # exactly full is allowed


# --- token ids -------------------------------------------------------------------------------------


def test_token_ids_at_the_edges_are_fine(notebook, model):
    assert model(torch.tensor([[0, 256]])).shape == (1, 2, 257)


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


def test_tiny_temperature_is_greedy(nb1):
    """1e-40 is a valid temperature: logits / 1e-40 overflow to +-inf, which must still pick the argmax
    (it used to be torch.multinomial's 'probability tensor contains inf, nan or element < 0')."""
    for seed in range(5):
        logits = some_logits(seed)
        token = nb1.sample_next_token(logits, temperature=1e-40, generator=torch.Generator().manual_seed(seed))
        assert token.tolist() == [[logits.argmax().item()]]


@pytest.mark.parametrize("temperature", [1.0, 100.0])
def test_top_k_1_is_the_argmax(nb1, temperature):
    """top_k=1 leaves one candidate, whatever the temperature and the seed."""
    for seed in range(20):
        logits = some_logits(seed)
        token = nb1.sample_next_token(logits, temperature=temperature, top_k=1,
                                           generator=torch.Generator().manual_seed(seed))
        assert token.item() == logits.argmax().item()


def test_stop_ids_none_means_no_stop_ids(notebook, model):
    assert generate(notebook, model, prompt(3), 3, stop_ids=None) == generate(notebook, model, prompt(3), 3)


# --- device and dtype ------------------------------------------------------------------------------

def test_pick_device_cpu_and_auto(nb1):
    assert nb1.pick_device("cpu") == torch.device("cpu")
    assert nb1.pick_device(None).type in ("cpu", "cuda", "mps")


def test_an_empty_prompt_is_generation_from_bos_alone(nb1, offline_folder):
    tokenizer = nb1.Gemma3Tokenizer(offline_folder / "tokenizer.json")
    assert nb1.encode_prompt(tokenizer, "", instruction_tuned=False).tolist() == [[tokenizer.bos_id]]


# --- the model keeps the config it was built from --------------------------------------------------

def test_config_edited_after_build_changes_nothing(nb1):
    """The model copies cfg when built: editing the caller's dict afterwards changes nothing until the
    model is rebuilt (it used to reach the masks and the embedding scale, which read cfg, but not the
    layers or RoPE tables). Both edits below change the logits of a model built with them."""
    cfg = tiny_config(nb1)
    torch.manual_seed(0)
    model = nb1.Gemma3Model(cfg).eval()
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


def test_generate_after_a_batch_cache(nb2, tiny2):
    """A cache set up for a batch of two is rebuilt for generation's one row (it used to fail in
    index_copy_): the tokens are those of a fresh model with the same weights."""
    fresh = nb2.Gemma3Model(tiny_config(nb2)).eval()
    fresh.load_state_dict(tiny2.state_dict())
    tiny2.setup_cache(50, batch_size=2)
    tokens = list(nb2.generate_text_stream(tiny2, P, 3))
    assert tokens == list(nb2.generate_text_stream(fresh, P, 3))
    assert len(tokens) == 3


# --- config ----------------------------------------------------------------------------------------


# Values the model used to accept (NaN perplexity, qk_norm="no" acting as True, a warning only) or to
# refuse from deep inside torch; each is refused at Gemma3Model(cfg), naming the key.


def test_tiny_config_is_consistent(nb1):
    nb1.check_config(tiny_config(nb1))
    nb1.check_config(dict(nb1.GEMMA3_CONFIG_270M, dtype=torch.bfloat16))


def test_config_written_for_the_seed_notebooks(nb1):
    """The seed notebooks' configs have no rms_norm_eps (Gemma 3's 1e-6 applies) and no rope_types (the
    RoPE base follows layer_types)."""
    cfg = tiny_config(nb1)
    cfg.pop("rms_norm_eps", None)
    cfg.pop("rope_types", None)
    torch.manual_seed(0)
    model = nb1.Gemma3Model(cfg).eval()
    assert model.final_norm.eps == 1e-6
    assert all(block.input_layernorm.eps == 1e-6 for block in model.blocks)
    torch.manual_seed(0)
    full = nb1.Gemma3Model(tiny_config(nb1, rms_norm_eps=1e-6)).eval()
    with torch.no_grad():
        assert torch.equal(model(prompt(8)), full(prompt(8)))  # same weights, same arithmetic


# --- perplexity and comparisons --------------------------------------------------------------------


class FixedLogits(torch.nn.Module):
    """A stand-in for the model whose logits are given: (1, t, v); the model's cfg and final norm for the id checks."""

    def __init__(self, model, logits):
        super().__init__()
        self.cfg, self.final_norm, self.logits = model.cfg, model.final_norm, logits

    def forward(self, token_ids):
        return self.logits


@pytest.mark.parametrize(("value", "at_next_token", "refused"), [
    (float("nan"), False, True), (float("inf"), False, True), (float("-inf"), True, True),
    (float("-inf"), False, False),  # probability 0 for a token that did not come next: an exact, finite loss
], ids=["nan", "+inf", "-inf on the next token", "-inf elsewhere"])
def test_token_losses_refuse_every_non_finite_logit_that_changes_a_loss(nb1, tiny, value, at_next_token,
                                                                        refused):
    """token_losses checks the t - 1 losses, not the (t - 1, v) logits: each logit that makes a loss wrong is
    still refused."""
    ids = prompt(5)
    logits = torch.zeros(1, 5, tiny.cfg["vocab_size"])
    next_token = ids[0, 3].item()  # what position 2 predicts
    logits[0, 2, next_token if at_next_token else (next_token + 1) % tiny.cfg["vocab_size"]] = value
    model = FixedLogits(tiny, logits)
    if refused:
        with pytest.raises(FloatingPointError):
            nb1.token_losses(model, ids)
    else:
        assert torch.isfinite(nb1.token_losses(model, ids)).all()


def test_compare_generations_of_different_lengths(nb2, tiny2):
    """[1, 2, 3] against [1, 2] used to be 'identical for all 2 tokens'."""
    text = nb2.compare_generations(tiny2, P, [1, 2, 3], [1, 2])
    assert not text.startswith("identical"), text
    assert re.search(r"\b3\b", text) and re.search(r"\b2\b", text), text


# --- tokenizer -------------------------------------------------------------------------------------


# --- checkpoints -----------------------------------------------------------------------------------


def test_checkpoint_with_a_separate_head(nb1, capsys):
    """Some checkpoints store lm_head.weight beside the embedding: it loads into an untied head, as the
    seed's loader does, and the loader says so."""
    cfg = tiny_config(nb1)
    state_dict = hf_state_dict(hf_model(cfg))
    lm_head = torch.randn(cfg["vocab_size"], cfg["emb_dim"], generator=torch.Generator().manual_seed(1))
    state_dict["lm_head.weight"] = lm_head
    model = nb1.Gemma3Model(cfg).eval()
    nb1.load_weights_into_gemma(model, state_dict)
    assert model.out_head.weight is not model.tok_emb.weight
    assert torch.equal(model.out_head.weight, lm_head)
    assert torch.equal(model.tok_emb.weight, state_dict["model.embed_tokens.weight"])
    assert re.search(r"(?i)untied", capsys.readouterr().out)


# --- what the seed notebooks' readers and tests call, and other forms of a right call -------------------

def test_the_seeds_three_argument_loader_a_path_and_our_own_state_dict(nb1, tmp_path):
    """load_weights_into_gemma(model, param_config, params) as the seed calls it; a .safetensors path; and a
    state dict of this notebook's own model (its own parameter names): each loads the same weights."""
    from safetensors.torch import save_file

    cfg = tiny_config(nb1)
    state_dict = hf_state_dict(hf_model(cfg))
    save_file(state_dict, str(tmp_path / "model.safetensors"))
    torch.manual_seed(1)
    source = nb1.Gemma3Model(cfg)
    nb1.load_weights_into_gemma(source, state_dict)
    for checkpoint in ({"n_layers": cfg["n_layers"]}, state_dict), (str(tmp_path / "model.safetensors"),), (
            source.state_dict(),):
        model = nb1.Gemma3Model(cfg)
        nb1.load_weights_into_gemma(model, *checkpoint)
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), source.parameters(), strict=True))
        assert model.out_head.weight is model.tok_emb.weight  # still tied


def test_stop_ids_may_be_one_id(notebook, model):
    full = generate(notebook, model, prompt(3), 4)
    stop = full[-1]
    assert generate(notebook, model, prompt(3), 4, stop_ids=stop) == full[:full.index(stop)]


def test_sample_next_token_takes_v_logits(nb1):
    logits = torch.randn(50, generator=torch.Generator().manual_seed(0))
    assert nb1.sample_next_token(logits).tolist() == [logits.argmax().item()]  # (v,) -> (1,)
    drawn = nb1.sample_next_token(logits, temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert drawn.shape == (1,) and 0 <= drawn.item() < 50


def test_sample_next_token_takes_every_position(nb1):
    """(b, t, v) logits: a token for each position, (b, t, 1), as sampling each (v,) row on its own gives."""
    logits = torch.randn(2, 3, 50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(nb1.sample_next_token(logits), logits.argmax(dim=-1, keepdim=True))
    certain = torch.full((2, 3, 50), -1e4).scatter(-1, logits.argmax(dim=-1, keepdim=True), 0.0)  # exp(-1e4) is 0
    drawn = nb1.sample_next_token(certain, temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(drawn, logits.argmax(dim=-1, keepdim=True))  # one token has all the probability


@pytest.mark.parametrize("rows, length", [(2, 4), (1, 12)], ids=["a batch of 2, a cache for 1", "longer than it"])
def test_prefill_sets_up_a_cache_that_holds_the_prompt(nb2, tiny2, rows, length):
    """A prompt the cache set up cannot hold gets one that can: the logits are the uncached model's."""
    ids = torch.arange(5, 5 + rows * length).reshape(rows, length) % 257
    tiny2.setup_cache(8)
    with torch.no_grad():
        assert_close_fp32(tiny2.prefill(ids)[:, -1], tiny2(ids)[:, -1])
    assert (tiny2.cache_batch_size, tiny2.max_seq_len) == (rows, max(8, length))


def test_perplexity_of_int32_ids_equals_int64(nb1, tiny):
    ids = prompt(6)
    assert nb1.perplexity(tiny, ids.int()) == nb1.perplexity(tiny, ids)


@pytest.mark.parametrize("nb_name", ["nb2", "nb3"])
def test_the_cache_follows_the_models_dtype(request, nb_name):
    """A bfloat16 model moved to float32 gets a float32 cache (it used to fail in index_copy_), and its tokens are
    those of a model built in float32 with the same weights."""
    nb = request.getfixturevalue(nb_name)
    torch.manual_seed(0)
    model = nb.Gemma3Model(tiny_config(nb, dtype=torch.bfloat16)).eval().float()
    built = nb.Gemma3Model(tiny_config(nb)).eval()
    built.load_state_dict(model.state_dict())
    assert list(nb.generate_text_stream(model, P, 5)) == list(nb.generate_text_stream(built, P, 5))
    assert model.caches[0].k.dtype == torch.float32


def test_an_int8_model_moved_to_float32_generates_with_a_float32_cache(nb3):
    torch.manual_seed(0)
    model = nb3.quantize_int8_(nb3.Gemma3Model(tiny_config(nb3, dtype=torch.bfloat16)).eval()).to(torch.float32)
    assert len(list(nb3.generate_text_stream(model, P, 4))) == 4  # it used to fail in index_copy_
    assert model.caches[0].k.dtype == torch.float32


def test_reset_cache_and_cache_bytes_before_setup_cache(nb2, tiny2):
    tiny2.reset_cache()  # nothing to reset: no error
    assert nb2.cache_bytes(tiny2) == 0
    assert list(nb2.generate_text_stream(tiny2, P, 3))  # and the model still generates


def test_prefill_without_a_cache_makes_one(tiny2):
    with torch.no_grad():
        assert_close_fp32(tiny2.prefill(P)[:, -1], tiny2(P)[:, -1])


def test_int8_keeps_a_separate_head_separate(nb3, tmp_path):
    """A checkpoint with its own lm_head.weight: quantize_int8_ and load_quantized round the head and the embedding
    each as its own table (quantize_int8_ used to replace the embedding with the head's table: relative logit
    error 1.57, against 0.008 for the tied model)."""
    from safetensors.torch import save_file

    cfg = tiny_config(nb3)
    state_dict = hf_state_dict(hf_model(cfg))
    state_dict["lm_head.weight"] = torch.randn(cfg["vocab_size"], cfg["emb_dim"],
                                               generator=torch.Generator().manual_seed(1))
    save_file(state_dict, str(tmp_path / "model.safetensors"))
    model = nb3.Gemma3Model(cfg).eval()
    nb3.load_weights_into_gemma(model, state_dict)
    ids = prompt(8)
    with torch.no_grad():
        exact = model(ids)
        loaded = nb3.load_quantized(cfg, tmp_path / "model.safetensors")
        for quantized in (nb3.quantize_int8_(copy.deepcopy(model)), loaded):
            assert quantized.tok_emb.head is not quantized.out_head
            error = (quantized(ids) - exact).norm() / exact.norm()
            assert error < 0.05, error  # int8 rounding alone: about 0.01 here


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


NOTEBOOKS = {path.name: path for path in (NOTEBOOK_1, NOTEBOOK_2, NOTEBOOK_3)}
SEED_CONFIG = {  # the seed notebooks' config keys: no rms_norm_eps, scale_embeddings, rope_types
    "vocab_size": 262_144, "context_length": 32_768, "emb_dim": 640, "n_heads": 4, "n_layers": 18, "hidden_dim": 2048,
    "head_dim": 256, "qk_norm": True, "n_kv_groups": 1, "rope_local_base": 10_000.0, "rope_base": 1_000_000.0,
    "sliding_window": 512, "layer_types": ["sliding_attention"] * 18, "dtype": torch.float32,
    "query_pre_attn_scalar": 256}
DEFINITIONS = [definition for path in NOTEBOOKS.values() for definition in top_level_definitions(path)]


@pytest.mark.parametrize("notebook_name, name, node", DEFINITIONS, ids=[f"{nb}:{name}" for nb, name, _ in DEFINITIONS])
def test_each_definition_on_its_own(notebook_name, name, node):
    """Tooling that imports a notebook's definitions one by one (as the seed repository's does) needs each
    def/class to be definable without module constants: they may be used inside function bodies, not in
    default arguments, decorators or class bodies."""
    path = NOTEBOOKS[notebook_name]
    namespace = imports_namespace(path)
    module = ast.Module(body=[copy.deepcopy(node)], type_ignores=[])
    exec(compile(module, f"{notebook_name}:{name}", "exec"), namespace)
    assert name in namespace


@pytest.mark.parametrize("path", list(NOTEBOOKS.values()), ids=list(NOTEBOOKS))
def test_definitions_alone_build_load_and_generate(path):
    """With only the notebook's imports, functions and classes (no module constants, as the seed repository's
    importer takes them), a model builds from the seed's config keys, loads a checkpoint the seed's way and
    generates."""
    namespace = imports_namespace(path)
    for _, _, node in top_level_definitions(path):
        exec(compile(ast.Module(body=[copy.deepcopy(node)], type_ignores=[]), path.name, "exec"), namespace)
    for name in ("setup_cache", "reset_cache", "prefill", "decode", "decode_step"):  # the cache's methods, if any
        if name in namespace:
            setattr(namespace["Gemma3Model"], name, namespace[name])
    cfg = {key: value for key, value in tiny_config(SimpleNamespace(GEMMA3_CONFIG_270M=SEED_CONFIG)).items()}
    model = namespace["Gemma3Model"](cfg).eval()
    namespace["load_weights_into_gemma"](model, cfg, hf_state_dict(hf_model(dict(cfg, rms_norm_eps=1e-6))))
    assert len(list(namespace["generate_text_stream"](model, P, 3))) == 3
