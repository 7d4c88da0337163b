"""Greedy decoding, temperature, top-k and top-p, and seeded generation.

Distributions are checked empirically: one call samples a whole batch of identical logits rows
with a seeded generator, and each token's frequency must lie within 5 standard errors of the
expected probability (tokens that must never appear must have a count of exactly 0). With fixed
seeds every run draws the same samples, so these tests do not flicker.
"""

import pytest
import torch
from reference import tiny_config

N_DRAWS = 20_000


def frequencies(notebook, probs, n=N_DRAWS, seed=0, **kwargs):
    """Sample n times from logits log(probs) (a constant shift added) and return each token's frequency."""
    logits = (torch.log(torch.tensor(probs)) + 3.0).expand(n, len(probs))
    generator = torch.Generator().manual_seed(seed)
    kwargs.setdefault("temperature", 1.0)
    ids = notebook.sample_next_token(logits, generator=generator, **kwargs)
    assert ids.shape == (n, 1)
    return torch.bincount(ids[:, 0], minlength=len(probs)).double() / n


def assert_distribution(freq, expected, n=N_DRAWS):
    expected = torch.as_tensor(expected, dtype=torch.float64)
    expected = expected / expected.sum()
    never = expected == 0
    assert (freq[never] == 0).all(), f"tokens {never.nonzero().flatten().tolist()} must never be drawn: {freq}"
    tolerance = 5 * torch.sqrt(expected * (1 - expected) / n) + 1e-12
    assert ((freq - expected).abs() <= tolerance).all(), f"frequencies {freq.tolist()} vs expected {expected.tolist()}"


# --- sample_next_token -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_temperature_zero_is_argmax(nb1, dtype):
    logits = torch.randn(8, 300, generator=torch.Generator().manual_seed(1)).to(dtype)
    expected = logits.argmax(dim=-1, keepdim=True)
    assert torch.equal(nb1.sample_next_token(logits), expected)  # the default is greedy
    assert torch.equal(nb1.sample_next_token(logits, temperature=0.0, top_k=5, top_p=0.5), expected)
    tied = torch.tensor([[0.0, 2.0, 1.0, 2.0]], dtype=dtype)
    assert nb1.sample_next_token(tied).item() == 1  # a tie goes to the first index, as argmax does


def test_same_generator_seed_same_samples(nb1):
    logits = torch.zeros(500, 50)  # uniform: every draw is a genuine coin toss

    def draw(seed):
        return nb1.sample_next_token(logits, temperature=1.0, generator=torch.Generator().manual_seed(seed))

    torch.manual_seed(0)
    first = draw(42)
    torch.manual_seed(1)  # the global RNG must not matter when a generator is given
    assert torch.equal(draw(42), first)
    assert not torch.equal(draw(43), first)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 10.0])
def test_top_k_1_is_greedy(nb1, temperature):
    logits = torch.randn(64, 300, generator=torch.Generator().manual_seed(2))
    generator = torch.Generator().manual_seed(0)
    ids = nb1.sample_next_token(logits, temperature=temperature, top_k=1, generator=generator)
    assert torch.equal(ids, logits.argmax(dim=-1, keepdim=True))


def test_top_k_support_is_the_k_best(nb1):
    row = torch.randn(60, generator=torch.Generator().manual_seed(3))
    logits = row.expand(5_000, 60)
    ids = nb1.sample_next_token(logits, temperature=5.0, top_k=5, generator=torch.Generator().manual_seed(0))
    assert set(ids.flatten().tolist()) == set(row.topk(5).indices.tolist())  # all five seen, nothing else


def test_temperature_reshapes_the_distribution(nb1):
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    assert_distribution(frequencies(nb1, probs.tolist()), probs)
    assert_distribution(frequencies(nb1, probs.tolist(), temperature=2.0), probs ** 0.5)
    assert_distribution(frequencies(nb1, probs.tolist(), temperature=0.5), probs ** 2)


def test_top_k_renormalises(nb1):
    assert_distribution(frequencies(nb1, [0.15, 0.5, 0.05, 0.3], top_k=2), [0, 0.5, 0, 0.3])


# Exact binary fractions, so float32 softmax and cumsum land exactly on the boundaries; the best token
# is not first, so a mix-up between sorted and vocabulary order shows.
DYADIC = [0.125, 0.5, 0.03125, 0.25, 0.09375]  # ranks: index 1, 3, 0, 4, 2
# Mass of the better-ranked tokens before each rank: 0, 0.5, 0.75, 0.875, 0.96875. A token is kept iff
# that mass is < top_p: the smallest set of best tokens whose total reaches top_p.
TOP_P_CASES = [
    (0.3, [1]),
    (0.5, [1]),  # the best token alone reaches 0.5: the next one is not needed
    (0.5001, [1, 3]),
    (0.75, [1, 3]),
    (0.8, [1, 3, 0]),
    (0.875, [1, 3, 0]),
    (0.9, [1, 3, 0, 4]),
    (0.97, [1, 3, 0, 4, 2]),
    (1.0, [1, 3, 0, 4, 2]),
]


@pytest.mark.parametrize("top_p, kept", TOP_P_CASES, ids=[str(p) for p, _ in TOP_P_CASES])
def test_top_p_keeps_the_smallest_set_reaching_p(nb1, top_p, kept):
    expected = [p if i in kept else 0.0 for i, p in enumerate(DYADIC)]
    assert_distribution(frequencies(nb1, DYADIC, top_p=top_p), expected)


def test_top_p_non_dyadic(nb1):
    # 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps the first two, 0.85 the first three, renormalised.
    assert_distribution(frequencies(nb1, [0.05, 0.3, 0.5, 0.15], top_p=0.7), [0, 0.3, 0.5, 0])
    assert_distribution(frequencies(nb1, [0.05, 0.3, 0.5, 0.15], top_p=0.85), [0, 0.3, 0.5, 0.15])


def test_top_p_applies_after_temperature_and_top_k(nb1):
    """The order of transformers' and llama.cpp's samplers: temperature, then top-k, then top-p."""
    probs = [0.5, 0.3, 0.15, 0.05]
    # After top-k 3 the probabilities are 0.526, 0.316, 0.158: the mass before the third is 0.842 >= 0.83.
    # (Had top-p used the probabilities before top-k, the mass before it would be 0.8 < 0.83: three kept.)
    assert_distribution(frequencies(nb1, probs, top_k=3, top_p=0.83), [0.5, 0.3, 0, 0])
    # At temperature 2 the probabilities are 0.379, 0.293, 0.208, 0.120: the mass before the third is
    # 0.672 < 0.7, so three are kept. (Before the temperature it would be 0.8 >= 0.7: two kept.)
    tempered = [p ** 0.5 for p in probs]
    assert_distribution(frequencies(nb1, probs, temperature=2.0, top_p=0.7), [*tempered[:3], 0])


# --- generate_text_stream on a tiny random model ----------------------------------------------------

PROMPT = [[5, 17, 42, 99]]
NEW_TOKENS = 8


@pytest.fixture
def tiny_model(notebook):
    torch.manual_seed(0)
    model = notebook.Gemma3Model(tiny_config(notebook)).eval()
    with torch.no_grad():  # default N(0, 1) tied embedding makes the model repeat its last token
        model.tok_emb.weight.normal_(0.0, 0.3)  # smaller: the next-token distributions are spread
    return model


def generate(notebook, model, **kwargs):
    return list(notebook.generate_text_stream(model, torch.tensor(PROMPT), NEW_TOKENS, **kwargs))


def greedy_reference(model):
    """Greedy decoding written out: full forward pass, argmax of the last position, append."""
    ids = torch.tensor(PROMPT)
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            next_id = model(ids)[:, -1].argmax(dim=-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
    return ids[0, len(PROMPT[0]):].tolist()


def test_seeded_generation_repeats(notebook, tiny_model):
    torch.manual_seed(0)
    first = generate(notebook, tiny_model, temperature=1.0, seed=7)
    torch.manual_seed(1)  # the seed, not the global RNG, decides
    assert generate(notebook, tiny_model, temperature=1.0, seed=7) == first
    assert len(first) == NEW_TOKENS


def test_different_seeds_give_different_tokens(notebook, tiny_model):
    runs = {tuple(generate(notebook, tiny_model, temperature=1.0, seed=seed)) for seed in range(1, 5)}
    assert len(runs) >= 2, f"four seeds gave the same tokens: {runs}"


def test_temperature_zero_is_greedy(notebook, tiny_model):
    expected = greedy_reference(tiny_model)
    assert len(set(expected)) > 1, "degenerate model: greedy repeats one token"
    assert generate(notebook, tiny_model) == expected
    assert generate(notebook, tiny_model, temperature=0.0, seed=3) == expected
    assert generate(notebook, tiny_model, temperature=1.0, top_k=1, seed=3) == expected
