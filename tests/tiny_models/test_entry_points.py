"""A sweep of the notebooks' entry points with bad values: each is refused where the call enters the
notebook's code, with a message that names the argument (or the bad value), never with an error from
deep inside torch or another library.

One table: (entry point, notebooks, the call with one bad value, the name the message must hold).
A new entry point, or a new argument of an existing one, joins the table with at least one row.
The detailed cases (what the right result is where an input is unusual but valid) are in
tests/test_bad_input.py; this table asserts only that every door is guarded.
"""

from dataclasses import dataclass, field

import pytest
import torch
from reference import hf_model, hf_state_dict, tiny_config

P = torch.tensor([[5, 6, 7, 8]])  # positions 0..3 of tiny_config's 257-token vocabulary


class Context:
    """What a row's call needs: the notebook, a tiny model, and the real tokenizer when asked for."""

    def __init__(self, nb, request):
        self.nb, self._request = nb, request
        torch.manual_seed(0)
        self.cfg = tiny_config(nb)
        self.model = nb.Gemma3Model(self.cfg).eval()

    def with_cache(self):
        """The model with an empty cache for one row of up to 16 positions."""
        self.model.setup_cache(16)
        return self.model

    def cached(self):
        """The model with a cache for one row, prompt P prefilled: the next position is 4."""
        self.with_cache().prefill(P)
        return self.model

    @property
    def tokenizer(self):
        folder = self._request.getfixturevalue("offline_folder")
        return self.nb.Gemma3Tokenizer(folder / "tokenizer.json")

    def generate(self, max_new_tokens=2, token_ids=P, **kwargs):
        return list(self.nb.generate_text_stream(self.model, token_ids, max_new_tokens, **kwargs))

    def sample(self, **kwargs):
        logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0))
        return self.nb.sample_next_token(logits, **dict(dict(temperature=1.0), **kwargs))

    def compiled_decode(self, token_ids, position):
        decode = self.nb.compile_decode(self.model)
        self.cached()
        with torch.no_grad():
            return decode(token_ids, position)

    def load(self, state_dict):
        return self.nb.load_weights_into_gemma(self.model, state_dict)


def prepare_weights(source):
    from gemma3_weights import prepare_weights

    return prepare_weights(source)


def weights_error():
    from gemma3_weights import WeightsError

    return WeightsError


def other_emb_dim(c):
    return hf_state_dict(hf_model(tiny_config(c.nb, emb_dim=32)))  # the model's emb_dim is 48


def int8_model(c):
    c.model = c.nb.quantize_int8_(c.model)
    return hf_state_dict(hf_model(c.cfg))


@dataclass
class Row:
    entry: str  # the entry point, as a reader calls it
    bad: str  # the bad value, for the test's id
    call: object  # Context -> the call
    name: str  # what the message must name (a regular expression, case-insensitive)
    notebooks: tuple = ("nb1", "nb2")
    errors: object = ValueError  # or a function returning a tuple of exception types
    marks: list = field(default_factory=list)


SLOW_COMPILE = [pytest.mark.slow, pytest.mark.uses_inductor]
NB2 = ("nb2",)

TABLE = [
    Row("Gemma3Model(cfg)", "rope_base=0", lambda c: c.nb.Gemma3Model(dict(c.cfg, rope_base=0)), "rope_base"),
    Row("Gemma3Model(cfg)", "qk_norm='no'", lambda c: c.nb.Gemma3Model(dict(c.cfg, qk_norm="no")), "qk_norm"),
    Row("Gemma3Model(cfg)", "sliding_window=None", lambda c: c.nb.Gemma3Model(dict(c.cfg, sliding_window=None)),
        "sliding_window"),
    Row("Gemma3Model(cfg)", "dtype='bfloat16'", lambda c: c.nb.Gemma3Model(dict(c.cfg, dtype="bfloat16")), "dtype"),
    Row("forward", "float ids", lambda c: c.model(torch.tensor([[5.0, 6.0]])), "token"),
    Row("forward", "id = vocab_size", lambda c: c.model(torch.tensor([[5, 257]])), "token"),
    Row("forward", "a list", lambda c: c.model([[5, 6]]), "token"),
    Row("setup_cache", "max_seq_len=10.5", lambda c: c.model.setup_cache(10.5), "max_seq_len", NB2),
    Row("setup_cache", "batch_size=0", lambda c: c.model.setup_cache(16, batch_size=0), "batch_size", NB2),
    Row("prefill", "float ids", lambda c: c.with_cache().prefill(P.float()), "token", NB2),
    Row("prefill", "batch of 2 into a cache for 1",
        lambda c: c.with_cache().prefill(torch.cat([P, P])), "batch", NB2),
    Row("decode", "position -1", lambda c: c.cached().decode(torch.tensor([[9]]), torch.tensor([-1])),
        "position", NB2),
    Row("decode", "position skipped", lambda c: c.cached().decode(torch.tensor([[9]]), torch.tensor([5])),
        "position", NB2),
    Row("decode", "id = vocab_size", lambda c: c.cached().decode(torch.tensor([[257]]), torch.tensor([4])),
        "token", NB2),
    Row("compile_decode(model)", "position skipped",
        lambda c: c.compiled_decode(torch.tensor([[9]]), torch.tensor([5])), "position", NB2, marks=SLOW_COMPILE),
    Row("generate_text_stream", "max_new_tokens=2.5", lambda c: c.generate(2.5), "max_new_tokens"),
    Row("generate_text_stream", "temperature='0.7'", lambda c: c.generate(temperature="0.7"), "temperature"),
    Row("generate_text_stream", "top_k=2.5", lambda c: c.generate(temperature=1.0, top_k=2.5), "top_k"),
    Row("generate_text_stream", "top_p=0", lambda c: c.generate(temperature=1.0, top_p=0.0), "top_p"),
    Row("generate_text_stream", "seed=1.5", lambda c: c.generate(temperature=1.0, seed=1.5), "seed"),
    Row("generate_text_stream", "token_ids of 2 rows", lambda c: c.generate(token_ids=torch.cat([P, P])), "batch"),
    Row("sample_next_token", "temperature=nan", lambda c: c.sample(temperature=float("nan")), "temperature"),
    Row("sample_next_token", "temperature=None", lambda c: c.sample(temperature=None), "temperature"),
    Row("sample_next_token", "top_k=2.5", lambda c: c.sample(top_k=2.5), "top_k"),
    Row("sample_next_token", "top_p=1.5", lambda c: c.sample(top_p=1.5), "top_p"),
    Row("perplexity", "one token", lambda c: c.nb.perplexity(c.model, P[:, :1]), "2 tokens|two"),
    Row("Gemma3Tokenizer", "a missing file", lambda c: c.nb.Gemma3Tokenizer("missing/tokenizer.json"),
        "missing/tokenizer\\.json"),
    Row("Gemma3Tokenizer.encode", "a lone surrogate", lambda c: c.tokenizer.encode("a\ud800"), "text"),
    Row("Gemma3Tokenizer.decode", "id -1", lambda c: c.tokenizer.decode([-1]), "-1"),
    Row("Gemma3Tokenizer.decode", "id 300000", lambda c: c.tokenizer.decode([2, 300000]), "300,?000"),
    Row("load_weights_into_gemma", "another emb_dim", lambda c: c.load(other_emb_dim(c)), "emb_dim"),
    Row("load_weights_into_gemma", "an int8 model", lambda c: c.load(int8_model(c)), "int8", NB2),
    Row("prepare_weights", "source='nope'", lambda c: prepare_weights("nope"), "nope",
        errors=lambda: (ValueError, weights_error())),
    Row("prepare_weights", "source=None", lambda c: prepare_weights(None), "source",
        errors=lambda: (ValueError, weights_error())),
]

CASES = [pytest.param(nb, row, id=f"{nb}-{row.entry}-{row.bad}", marks=row.marks)
         for row in TABLE for nb in row.notebooks]


@pytest.mark.parametrize("nb_name, row", CASES)
def test_entry_point_refuses_a_bad_value(request, nb_name, row):
    c = Context(request.getfixturevalue(nb_name), request)
    errors = row.errors() if callable(row.errors) and not isinstance(row.errors, type) else row.errors
    with pytest.raises(errors, match=f"(?i){row.name}"):
        row.call(c)

