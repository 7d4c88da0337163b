"""Every refusal, in one table: each bad input is refused where the reader's call enters the notebook's code, with a
message that names the argument or the cause (never an error from deep inside torch or another library), and
before any state changes.

A row: (entry point, the bad value, the call with it, what the message must name, the notebooks it runs in). Each
row asserts the exception type and one key phrase, never a whole sentence, so the wording can improve without
breaking the table; a row's `after` asserts the state the refusal left. Definitions that the notebooks share are
byte-identical (tests/no_arithmetic/test_notebooks_in_step.py), so a row runs in one notebook: notebook 1 for the
model and generation, notebook 2 for the cache and its generation, notebook 3 for int8. What the right result is
where an input is unusual but valid is in tests/tiny_models/test_unusual_input.py. `generate_text_stream` is a
generator: its checks run at the first `next()`, so the rows consume it.
"""

import json
from dataclasses import dataclass, field

import pytest
import torch
from reference import hf_model, hf_state_dict, tiny_config
from safetensors.torch import save_file

P = torch.tensor([[5, 6, 7, 8]])  # positions 0..3 of tiny_config's 257-token vocabulary (context length 96)


class Context:
    """What a row's call needs: the notebook, a tiny model, files in a scratch folder, the real tokenizer."""

    def __init__(self, nb, request):
        self.nb, self._request = nb, request
        torch.manual_seed(0)
        self.cfg = tiny_config(nb)
        self.model = nb.Gemma3Model(self.cfg).eval()

    def fixture(self, name):
        return self._request.getfixturevalue(name)

    def build(self, **edit):
        return self.nb.Gemma3Model(dict(self.cfg, **edit))

    def real_config(self, **edit):
        return self.nb.Gemma3Model(dict(self.nb.GEMMA3_CONFIG_270M, dtype=torch.bfloat16, **edit))

    def with_cache(self, max_seq_len=16):
        self.model.setup_cache(max_seq_len)
        return self.model

    def cached(self, max_seq_len=16):
        """The model with a cache for one row, prompt P prefilled: the next position is 4."""
        self.with_cache(max_seq_len).prefill(P)
        return self.model

    def decode(self, token_ids, position, max_seq_len=16):
        return self.cached(max_seq_len).decode(torch.tensor(token_ids), position)

    @property
    def tokenizer(self):
        return self.nb.Gemma3Tokenizer(self.fixture("offline_folder") / "tokenizer.json")

    def generate(self, max_new_tokens=2, token_ids=P, **kwargs):
        return list(self.nb.generate_text_stream(self.model, token_ids, max_new_tokens, **kwargs))

    def two_streams(self):
        first = self.nb.generate_text_stream(self.model, P, 5)
        next(first)
        next(self.nb.generate_text_stream(self.model, torch.tensor([[9, 10]]), 5))  # uses the same cache
        next(first)

    def sample(self, logits=None, **kwargs):
        logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0)) if logits is None else logits
        return self.nb.sample_next_token(logits, **dict(dict(temperature=1.0), **kwargs))

    def with_nan_logits(self):
        with torch.no_grad():
            self.model.final_norm.weight.fill_(float("inf"))  # inf * 0 somewhere: NaN logits, as an overflow gives
        return self.model

    def compiled_decode(self, position, max_seq_len=16, steps=()):
        decode = self.nb.compile_decode(self.model)
        self.cached(max_seq_len)
        with torch.no_grad():
            for step in steps:
                decode(torch.tensor([[9]]), torch.tensor([step]))
            return decode(torch.tensor([[9]]), torch.tensor([position]))

    def load(self, checkpoint, model=None):
        return self.nb.load_weights_into_gemma(model or self.model, checkpoint)

    def file(self, contents=None, name="model.safetensors"):
        """A path in a scratch folder: a saved tiny checkpoint, given bytes, or nothing there."""
        path = self.fixture("tmp_path") / name
        if contents == "checkpoint":
            save_file(hf_state_dict(hf_model(self.cfg)), str(path))
        elif contents is not None:
            path.write_bytes(contents)
        return path

    def setenv(self, name, value):
        self.fixture("monkeypatch").setenv(name, str(value))


def other_size(c, **edit):
    return hf_state_dict(hf_model(tiny_config(c.nb, **edit)))


def int8_model(c):
    c.model = c.nb.quantize_int8_(c.model)
    return hf_state_dict(hf_model(c.cfg))


def weights_error():
    from gemma3_weights import WeightsError

    return WeightsError


def prepare_weights(source):
    from gemma3_weights import prepare_weights

    return prepare_weights(source)


def unchanged(c):
    """The model's weights are those it was built with: a refused load copied nothing (the shapes of every tensor
    are checked before the first copy)."""
    torch.manual_seed(0)
    built = c.nb.Gemma3Model(c.cfg)
    assert all(torch.equal(p, q) for p, q in zip(c.model.parameters(), built.parameters(), strict=True))


@dataclass
class Row:
    entry: str  # the entry point, as a reader calls it
    bad: str  # the bad value, for the test's id
    call: object  # Context -> the call
    name: str  # what the message must name (a regular expression, case-insensitive)
    notebooks: tuple = ("nb1",)
    errors: object = ValueError  # or a function returning the exception types
    after: object = None  # Context -> None: asserts the state the refusal left
    marks: list = field(default_factory=list)


NB2, NB3, GEN = ("nb2",), ("nb3",), ("nb1", "nb2")  # generate_text_stream differs: with and without the cache
SLOW_COMPILE = [pytest.mark.slow, pytest.mark.uses_inductor]

CONFIG = [
    Row("Gemma3Model(cfg)", "a misspelt key", lambda c: c.build(sliding_windows=2),
        "unknown key 'sliding_windows' \\(did you mean 'sliding_window'\\?\\)"),
    Row("Gemma3Model(cfg)", "no dtype", lambda c: c.nb.Gemma3Model(c.nb.GEMMA3_CONFIG_270M),
        "dtype must be .*not missing"),
    *[Row("Gemma3Model(cfg)", bad, lambda c, edit=edit: c.build(**edit), name) for bad, edit, name in [
        ("layer_types too long", dict(n_layers=5), "layer_types"),
        ("layer_types too short", dict(layer_types=["sliding_attention", "full_attention"]), "layer_types"),
        ("an unknown layer type", dict(layer_types=["sliding_attention"] * 5 + ["global"]), "layer_types"),
        ("n_heads not a multiple", dict(n_kv_groups=3), "n_kv_groups"),
        ("odd head_dim", dict(head_dim=15), "head_dim"),
        ("sliding_window=0", dict(sliding_window=0), "sliding_window"),
        ("sliding_window=4.5", dict(sliding_window=4.5), "sliding_window"),
        ("sliding_window=None", dict(sliding_window=None), "sliding_window"),
        ("emb_dim=48.0", dict(emb_dim=48.0), "emb_dim"),
        ("zero layers", dict(n_layers=0, layer_types=[]), "n_layers"),
        ("rope_base=0", dict(rope_base=0), "rope_base"),
        ("rope_base=-1", dict(rope_base=-1), "rope_base"),
        ("rope_local_base=0", dict(rope_local_base=0), "rope_local_base"),
        ("rope_types too short", dict(rope_types=["local"]), "rope_types"),
        ("qk_norm='no'", dict(qk_norm="no"), "qk_norm"),
        ("scale_embeddings=1", dict(scale_embeddings=1), "scale_embeddings"),
        ("query_pre_attn_scalar=-256", dict(query_pre_attn_scalar=-256), "query_pre_attn_scalar"),
        ("query_pre_attn_scalar=0", dict(query_pre_attn_scalar=0), "query_pre_attn_scalar"),
        ("rms_norm_eps=0", dict(rms_norm_eps=0), "rms_norm_eps"),
        ("dtype='bfloat16'", dict(dtype="bfloat16"), "dtype"),
        ("dtype=torch.int8", dict(dtype=torch.int8), "dtype"),
        ("dtype=torch.float16", dict(dtype=torch.float16), "float16 overflows"),
    ]],
    Row("Gemma3Model(cfg)", "the 270M config, n_layers=12", lambda c: c.real_config(n_layers=12), "layer_types"),
]

TOKEN_IDS = [
    *[Row("forward", bad, lambda c, ids=ids: c.model(ids), name) for bad, ids, name in [
        ("float ids", torch.tensor([[5.0, 6.0]]), "integer tensor"),
        ("a list", [[5, 6]], "tensor"),
        ("no tokens", torch.zeros(1, 0, dtype=torch.long), r"\(1, 0\)"),
        ("1-D", torch.arange(5, 8), "shape"),
        ("3-D", torch.arange(5, 8).reshape(1, 1, 3), "shape"),
        ("id -1", torch.tensor([[5, -1, 7]]), r"0\.\.256"),
        ("id = vocab_size", torch.tensor([[5, 257]]), r"0\.\.256"),
        ("id far too large", torch.tensor([[5, 10**6]]), r"0\.\.256"),
        ("past the context", torch.arange(97)[None] % 200, "t <= 96"),
    ]],
    Row("forward", "a float16 model (model.half())", lambda c: c.model.half()(P), "float16"),
    Row("perplexity", "one token", lambda c: c.nb.perplexity(c.model, P[:, :1]), "2 tokens"),
    Row("perplexity", "a batch of 2", lambda c: c.nb.perplexity(c.model, torch.cat([P, P])), r"shape \(1, t"),
    Row("perplexity", "NaN logits", lambda c: c.nb.perplexity(c.with_nan_logits(), P), "NaN",
        errors=FloatingPointError),
    Row("logit_lens", "a batch of 2", lambda c: c.nb.logit_lens(c.model, torch.cat([P, P])), r"shape \(1, t"),
    Row("run_lab", "a row editing hidden_dim", lambda c: c.nb.run_lab(c.model, P, {"x": {"hidden_dim": 64}}),
        "hidden_dim"),
    Row("run_lab", "a misspelt key", lambda c: c.nb.run_lab(c.model, P, {"x": {"sliding_windw": 2}}),
        "did you mean 'sliding_window'"),
]

GENERATION = [
    *[Row("generate_text_stream", bad, lambda c, kwargs=kwargs: c.generate(**kwargs), name, GEN)
      for bad, kwargs, name in [
          ("max_new_tokens=0", dict(max_new_tokens=0), "max_new_tokens"),
          ("max_new_tokens=-1", dict(max_new_tokens=-1), "max_new_tokens"),
          ("max_new_tokens=2.5", dict(max_new_tokens=2.5), "max_new_tokens"),
          ("max_new_tokens='3'", dict(max_new_tokens="3"), "max_new_tokens"),
          ("max_new_tokens=True", dict(max_new_tokens=True), "max_new_tokens"),
          ("prompt plus new tokens past the context", dict(max_new_tokens=93), "context length less the prompt"),
          ("no tokens", dict(token_ids=torch.zeros(1, 0, dtype=torch.long)), r"\(1, 0\)"),
          ("token_ids of 2 rows", dict(token_ids=torch.cat([P, P])), r"shape \(1, t"),
          ("temperature=-1", dict(temperature=-1), "temperature"),
          ("temperature=inf", dict(temperature=float("inf")), "temperature"),
          ("temperature=nan", dict(temperature=float("nan")), "temperature"),
          ("top_k=2.5", dict(temperature=1.0, top_k=2.5), "top_k"),
          ("top_p=0", dict(temperature=1.0, top_p=0.0), "top_p"),
      ]],
    Row("generate_text_stream", "NaN logits", lambda c: (c.with_nan_logits(), c.generate()), "NaN", GEN,
        errors=FloatingPointError),
    Row("generate_text_stream", "a second live stream on the model", lambda c: c.two_streams(),
        "another generation", NB2, errors=RuntimeError),
    *[Row("sample_next_token", bad, lambda c, kwargs=kwargs: c.sample(**kwargs), name) for bad, kwargs, name in [
        ("top_k=0", dict(top_k=0), "top_k"),
        ("top_k=-1", dict(top_k=-1), "top_k"),
        ("top_k=2.5", dict(top_k=2.5), "top_k"),
        ("top_p=0", dict(top_p=0.0), "top_p"),
        ("top_p=-0.1", dict(top_p=-0.1), "top_p"),
        ("top_p=1.5", dict(top_p=1.5), "top_p"),
        ("temperature=nan", dict(temperature=float("nan")), "temperature"),
    ]],
    # A type that can't be compared or used as an index: Python's own TypeError, raised where the argument is read.
    *[Row("generate_text_stream", bad, lambda c, kwargs=kwargs: c.generate(**kwargs), name, GEN, errors=TypeError)
      for bad, kwargs, name in [
          ("stop_ids of strings", dict(stop_ids=["<eos>"]), "'str' object cannot be interpreted as an integer"),
          ("temperature='0.7'", dict(temperature="0.7"), "'<=' not supported between .*'int' and 'str'"),
          ("temperature=None", dict(temperature=None), "'<=' not supported between .*'int' and 'NoneType'"),
      ]],
    Row("sample_next_token", "a NaN logit", lambda c: c.sample(logits=torch.tensor([[0.0, float("nan"), 1.0]])),
        "NaN", errors=FloatingPointError),
]

CACHE = [
    *[Row("setup_cache", bad, lambda c, kwargs=kwargs: c.model.setup_cache(**kwargs), name, NB2)
      for bad, kwargs, name in [
          ("max_seq_len=10.5", dict(max_seq_len=10.5), "max_seq_len"),
          ("max_seq_len=0", dict(max_seq_len=0), "max_seq_len"),
          ("max_seq_len past the context", dict(max_seq_len=97), "max_seq_len"),
          ("batch_size=0", dict(max_seq_len=16, batch_size=0), "batch_size"),
          ("batch_size=1.5", dict(max_seq_len=16, batch_size=1.5), "batch_size"),
          ("batch_size=-1", dict(max_seq_len=16, batch_size=-1), "batch_size"),
      ]],
    Row("prefill", "float ids", lambda c: c.with_cache().prefill(P.float()), "integer tensor", NB2),
    Row("prefill", "past the context length", lambda c: c.with_cache(96).prefill(torch.arange(97)[None] % 200),
        "t <= 96", NB2),
    Row("decode", "no prefill", lambda c: c.with_cache().decode(torch.tensor([[5]]), torch.tensor([4])), "prefill",
        NB2),
    Row("decode", "after reset_cache", lambda c: (c.cached(), c.model.reset_cache(),
                                                  c.model.decode(torch.tensor([[5]]), torch.tensor([4]))),
        "prefill", NB2),
    Row("decode", "position skipped", lambda c: c.decode([[9]], torch.tensor([5])), "position", NB2,
        after=lambda c: c.model.decode(torch.tensor([[9]]), torch.tensor([4]))),  # the right retry still works
    Row("decode", "position -1", lambda c: c.decode([[9]], torch.tensor([-1])), "position", NB2),
    Row("decode", "an int32 position", lambda c: c.decode([[9]], torch.tensor([4], dtype=torch.int32)),
        r"torch.tensor\(\[4\]\)", NB2, after=lambda c: c.model.decode(torch.tensor([[9]]), torch.tensor([4]))),
    Row("decode", "float ids", lambda c: c.decode([[9.0]], torch.tensor([4])), "integer tensor", NB2),
    Row("decode", "id = vocab_size", lambda c: c.decode([[257]], torch.tensor([4])), r"0\.\.256", NB2),
    Row("decode", "id -1", lambda c: c.decode([[-1]], torch.tensor([4])), r"0\.\.256", NB2),
    Row("decode", "two tokens", lambda c: c.decode([[9, 10]], torch.tensor([4])), "one token per row", NB2),
    Row("decode", "past the cache's capacity", lambda c: (c.decode([[9]], torch.tensor([4]), max_seq_len=5),
                                                          c.model.decode(torch.tensor([[9]]), torch.tensor([5]))),
        r"of the cache's 5 \(setup_cache makes more\)", NB2),
    Row("compile_decode(model)", "position skipped", lambda c: c.compiled_decode(5), "position", NB2,
        marks=SLOW_COMPILE),
    Row("compile_decode(model)", "past the cache's capacity", lambda c: c.compiled_decode(6, 6, steps=(4, 5)),
        r"of the cache's 6 \(setup_cache makes more\)", NB2, marks=SLOW_COMPILE),
]

TEXT = [
    Row("Gemma3Tokenizer", "a missing file", lambda c: c.nb.Gemma3Tokenizer("missing/tokenizer.json"),
        "missing/tokenizer\\.json"),
    Row("Gemma3Tokenizer", "a JSON file that is no tokenizer",
        lambda c: c.nb.Gemma3Tokenizer(c.file(json.dumps({"a": 1}).encode(), "tokenizer.json")), "as a tokenizer"),
    Row("Gemma3Tokenizer.encode", "a lone surrogate", lambda c: c.tokenizer.encode("a\ud800"), "text"),
    Row("Gemma3Tokenizer.encode", "a list", lambda c: c.tokenizer.encode(["a"]), "str"),
    Row("Gemma3Tokenizer.decode", "id -1", lambda c: c.tokenizer.decode([-1]), "-1"),
    Row("Gemma3Tokenizer.decode", "id 300000", lambda c: c.tokenizer.decode([2, 300000]), "300,?000"),
    Row("Gemma3Tokenizer.decode", "a (2, t) tensor", lambda c: c.tokenizer.decode(torch.cat([P, P])), "one text"),
    Row("Gemma3Tokenizer.decode", "float ids", lambda c: c.tokenizer.decode([2.0]), "whole numbers"),
    Row("apply_chat_template", "a dict, not a list", lambda c: c.nb.apply_chat_template({"role": "user"}), "list"),
    Row("apply_chat_template", "no content", lambda c: c.nb.apply_chat_template([{"role": "user"}]), "content"),
    Row("apply_chat_template", "content=None",
        lambda c: c.nb.apply_chat_template([{"role": "user", "content": None}]), "content"),
]

WEIGHTS = [
    Row("load_weights_into_gemma", "another emb_dim", lambda c: c.load(other_size(c, emb_dim=32)),
        r"embed_tokens.weight is \(257, 32\), not \(257, ",
        after=unchanged),
    Row("load_weights_into_gemma", "another hidden_dim", lambda c: c.load(other_size(c, hidden_dim=64)),
        r"mlp.up_proj.weight is \(64, ", after=unchanged),
    Row("load_weights_into_gemma", "another head_dim", lambda c: c.load(other_size(c, head_dim=32)),
        r"self_attn.q_proj.weight is \(", after=unchanged),
    Row("load_weights_into_gemma", "more layers", lambda c: c.load(other_size(
        c, n_layers=7, layer_types=c.cfg["layer_types"] + ["sliding_attention"])), "unexpected model.layers.6.",
        after=unchanged),
    Row("load_weights_into_gemma", "fewer layers",
        lambda c: c.load(other_size(c, n_layers=3, layer_types=c.cfg["layer_types"][:3])), "missing model.layers.3.",
        after=unchanged),
    Row("load_weights_into_gemma", "an int8 model", lambda c: c.load(int8_model(c)), "int8", NB3),
    *[Row("load_weights_into_gemma", bad, lambda c, path=path: c.load(path(c)), "give the path of a model.safetensors",
          after=unchanged) for bad, path in [
        ("a folder", lambda c: c.fixture("tmp_path")),
        ("a missing file", lambda c: c.file()),
        ("a web page", lambda c: c.file(b"<html>404 Not Found</html>")),
        ("an empty file", lambda c: c.file(b"")),
    ]],
    *[Row("load_quantized", bad, lambda c, path=path: c.nb.load_quantized(c.cfg, path(c)), "Cannot read", NB3)
      for bad, path in [
        ("a missing file", lambda c: c.file()),
        ("a folder", lambda c: c.fixture("tmp_path")),
        ("a truncated file", lambda c: c.file(c.file("checkpoint").read_bytes()[:1000])),
    ]],
    Row("prepare_weights", "source='nope'", lambda c: prepare_weights("nope"), "nope",
        errors=lambda: (ValueError, weights_error())),
    Row("prepare_weights", "source=None", lambda c: prepare_weights(None), "source",
        errors=lambda: (ValueError, weights_error())),
    Row("prepare_weights", "GEMMA3_CHECKPOINTS is a file",
        lambda c: (c.setenv("GEMMA3_CHECKPOINTS", c.file(b"x", "a-file")), prepare_weights("offline")),
        "a file, not a folder", errors=lambda: (weights_error(),)),
]

def train(c, pairs=None, lr=1e-3):
    """Two training steps of the tiny model on (prompt ids, answer ids) pairs: one good pair unless given."""
    pairs = [([2, 5, 6], [7, 1])] if pairs is None else pairs
    return c.nb.train(c.model, pairs, 2, lr, batch_size=1, log_every=100)


def quantized_by_int8(c):
    return c.fixture("nb3").quantize_int8_(c.model)


def saved_twice(c):
    folder = c.fixture("tmp_path") / "saved"
    tokenizer = c.file(b"{}", "tokenizer.json")
    c.nb.save_hf_folder(c.model, folder, tokenizer)
    (folder / "marker").write_text("kept")
    c.nb.save_hf_folder(c.model, folder, tokenizer)


def folder_kept(c):
    assert (c.fixture("tmp_path") / "saved" / "marker").read_text() == "kept"


NB4 = ("nb4",)
FINETUNING = [
    Row("train", "an empty data set", lambda c: train(c, []), "not 0 pairs", NB4, after=unchanged),
    Row("train", "an example longer than the context", lambda c: train(c, [([2] * 95, [3, 1])]),
        "the longest 97 tokens", NB4, after=unchanged),
    Row("train", "lr=0", lambda c: train(c, lr=0.0), "lr=0.0", NB4, after=unchanged),
    Row("train", "lr=NaN", lambda c: train(c, lr=float("nan")), "lr=nan", NB4, after=unchanged),
    Row("train", "lr='1e-3'", lambda c: train(c, lr="1e-3"), "'<' not supported", NB4, errors=TypeError,
        after=unchanged),  # Python's own TypeError, before anything changes
    Row("train", "no answer tokens", lambda c: train(c, [([2, 5, 6], [])]), "1 with no answer", NB4, after=unchanged),
    Row("make_examples", "split='test'", lambda c: c.nb.make_examples("test", 3, 0), "test", NB4, errors=KeyError),
    Row("add_lora", "an int8 model (Linear layers replaced)", lambda c: c.nb.add_lora(quantized_by_int8(c)),
        "nn.Linear", NB4),
    Row("add_lora", "rank=0", lambda c: c.nb.add_lora(c.model, rank=0), "rank", NB4, after=unchanged),
    Row("save_hf_folder", "an existing folder", saved_twice, "overwrite=True", NB4, errors=FileExistsError,
        after=folder_kept),
    Row("save_hf_folder", "LoRA not merged", lambda c: c.nb.save_hf_folder(
        c.nb.add_lora(c.model), c.fixture("tmp_path") / "out", c.file(b"{}", "tokenizer.json")), "merge_lora", NB4),
]

TABLE = CONFIG + TOKEN_IDS + GENERATION + CACHE + TEXT + WEIGHTS + FINETUNING
CASES = [pytest.param(nb, row, id=f"{nb}-{row.entry}-{row.bad}", marks=row.marks)
         for row in TABLE for nb in row.notebooks]


@pytest.mark.parametrize("nb_name, row", CASES)
def test_entry_point_refuses_a_bad_value(request, nb_name, row):
    c = Context(request.getfixturevalue(nb_name), request)
    errors = row.errors() if callable(row.errors) and not isinstance(row.errors, type) else row.errors
    with pytest.raises(errors, match=f"(?i){row.name}"):
        row.call(c)
    if row.after:
        row.after(c)
