"""The fine-tuning notebook's machinery on tiny random models: one training step against transformers, a short
run, LoRA, the saved folder in both loaders, the data generator, exact match against generation."""

import json

import pytest
import torch
from reference import FP32_EPS, assert_close_fp32, hf_model, hf_state_dict, tiny_config


def tiny_pairs(cfg, n, seed):
    """n (prompt, answer) pairs of random ids with prompts of 3..8 tokens and answers of 2..6."""
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(n):
        prompt = torch.randint(3, cfg["vocab_size"], (int(torch.randint(3, 9, (1,), generator=g)),), generator=g)
        answer = torch.randint(3, cfg["vocab_size"], (int(torch.randint(2, 7, (1,), generator=g)),), generator=g)
        pairs.append((prompt.tolist(), answer.tolist()))
    return pairs


def ours_and_reference(nb4, cfg, seed=0):
    hf = hf_model(cfg, seed)
    ours = nb4.Gemma3Model(cfg)
    nb4.load_weights_into_gemma(ours, hf_state_dict(hf))
    return ours, hf


def hf_loss(hf, pairs):
    """transformers' own loss: input_ids the whole sequences, labels -100 on the prompt and the padding
    (Gemma3ForCausalLM shifts the labels itself and averages over the counted tokens)."""
    length = max(len(p) + len(a) for p, a in pairs)
    ids = torch.zeros(len(pairs), length, dtype=torch.long)
    labels = torch.full((len(pairs), length), -100)
    for row, (prompt, answer) in enumerate(pairs):
        ids[row, :len(prompt) + len(answer)] = torch.tensor(prompt + answer)
        labels[row, len(prompt):len(prompt) + len(answer)] = torch.tensor(answer)
    return hf(input_ids=ids, labels=labels).loss


def test_one_training_step_equals_transformers(nb4):
    """The loss on the answers and the gradient of every trainable parameter (all but the frozen tied embedding)
    equal transformers' up to float32 rounding.

    Tolerance: both compute the same float32 functions; the gradients are sums over the batch's positions
    (and over the vocabulary for the head's input) added in another order by other kernels. Measured here (three
    seeds): the loss differs by at most 0.72 ulp of its value, each gradient by at most 4.0 ulps of its own largest
    value (gradients here are 3e-4 to 1, so each is measured against its own scale, not against 1). 32 ulps leaves
    8x room for other CPUs' kernels, while a real mistake moves a gradient by its own size: the prompt left in the
    loss changes the loss by 0.065, 250x the loss's tolerance (asserted below).
    """
    cfg = tiny_config(nb4)
    ours, hf = ours_and_reference(nb4, cfg)
    pairs = tiny_pairs(cfg, 4, seed=1)
    inputs, targets = nb4.make_batch(pairs)
    ours.tok_emb.weight.requires_grad_(False)
    hf.model.embed_tokens.weight.requires_grad_(False)
    loss = nb4.answer_loss(ours, inputs, targets)
    loss.backward()
    ref = hf_loss(hf, pairs)
    ref.backward()
    assert abs(loss.item() - ref.item()) <= 32 * FP32_EPS * abs(ref.item())
    hf_params = dict(hf.named_parameters())
    compared = 0
    for name, param in ours.named_parameters():
        if name == "tok_emb.weight":
            assert param.grad is None
            continue
        ref_grad = hf_params[nb4.hf_name_of(name)].grad
        assert ref_grad is not None and ref_grad.abs().max() > 0, name
        scale = ref_grad.abs().max().item()  # this gradient's own scale
        assert (param.grad - ref_grad).abs().max().item() <= 32 * FP32_EPS * scale, name
        compared += 1
    assert compared == len(list(ours.parameters())) - 1
    # The prompt masked out matters: the loss over every position differs far beyond the tolerance.
    everything = torch.cat([inputs[:, 1:], inputs[:, -1:]], dim=1)  # (b, t): every next token, prompt included
    unmasked = nb4.answer_loss(ours, inputs, everything)
    assert abs(unmasked.item() - ref.item()) > 100 * 32 * FP32_EPS * abs(ref.item())


def test_a_short_seeded_run_lowers_the_loss_and_repeats(nb4):
    cfg = tiny_config(nb4)
    pairs = tiny_pairs(cfg, 8, seed=2)
    histories, weights = [], []
    for _ in range(2):
        torch.manual_seed(0)
        model = nb4.Gemma3Model(cfg)
        histories.append(nb4.train(model, pairs, 30, 1e-2, batch_size=4, warmup=3, held_out=pairs, eval_every=10,
                                   log_every=100))
        weights.append(model.state_dict())
    first = histories[0]
    # The training pairs themselves as the "held-out" set: memorising them is what 30 steps can show on random ids.
    assert first["eval_loss"][-1] < first["eval_loss"][0] / 2, first["eval_loss"]
    assert first["loss"] == histories[1]["loss"]  # seeded: the same batches, the same arithmetic
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert first["lr"][0] == pytest.approx(1e-2 / 3) and max(first["lr"]) == pytest.approx(1e-2)
    assert first["lr"][-1] == pytest.approx(1e-3)  # cosine decay to a tenth of the peak
    # The tied embedding (and so the head) is frozen: untouched by 30 steps.
    torch.manual_seed(0)
    assert torch.equal(nb4.Gemma3Model(cfg).tok_emb.weight, model.tok_emb.weight)


def test_a_nan_mid_run_stops_with_the_step_and_keeps_the_last_good_weights(nb4):
    """A NaN at step 3 stops the run there; the weights are those after step 2, as a twin run interrupted (by an
    ordinary exception) at the same point has them."""
    cfg = tiny_config(nb4)
    pairs = tiny_pairs(cfg, 8, seed=3)

    def run_until_third_forward(effect):
        torch.manual_seed(0)
        model = nb4.Gemma3Model(cfg)
        calls = []

        def hook(module, args):
            calls.append(1)
            return effect(args) if len(calls) == 3 else None

        model.final_norm.register_forward_pre_hook(hook)
        return model

    def poison(args):
        return (args[0] * float("nan"),)

    def interrupt(args):
        raise KeyboardInterrupt

    model = run_until_third_forward(poison)
    with pytest.raises(FloatingPointError, match="Step 3.*after step 2"):
        nb4.train(model, pairs, 5, 1e-2, batch_size=4, log_every=100)
    twin = run_until_third_forward(interrupt)
    with pytest.raises(KeyboardInterrupt):
        nb4.train(twin, pairs, 5, 1e-2, batch_size=4, log_every=100)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters(), strict=True))
    torch.manual_seed(0)
    built = nb4.Gemma3Model(cfg)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), built.parameters(), strict=True))


def test_exact_matches_is_what_greedy_generation_writes(nb4):
    """exact_matches (one forward pass) says True exactly where generate_text_stream writes the answer."""
    cfg = tiny_config(nb4)
    torch.manual_seed(0)
    model = nb4.Gemma3Model(cfg).eval()
    pairs = []
    for prompt, _ in tiny_pairs(cfg, 6, seed=4):
        written = list(nb4.generate_text_stream(model, torch.tensor([prompt]), 4))
        wrong = written[:2] + [(written[2] + 1) % cfg["vocab_size"]] + written[3:]
        pairs += [(prompt, written + [1]), (prompt, wrong + [1])]  # the <eos> (id 1) is not scored
    hits = nb4.exact_matches(model, pairs, batch_size=4)
    expected = [list(nb4.generate_text_stream(model, torch.tensor([p]), len(a) - 1)) == a[:-1] for p, a in pairs]
    assert hits == expected and hits == [True, False] * 6


def test_lora_starts_at_the_model_and_merges_to_the_same_logits(nb4):
    """Merged logits equal the unmerged ones up to float32 rounding (32 ulps of the largest logit, as for every
    tiny-model comparison here: the merged weight W + s B A adds the same products in another order)."""
    cfg = tiny_config(nb4)
    torch.manual_seed(0)
    model = nb4.Gemma3Model(cfg).eval()
    ids = torch.randint(0, cfg["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        base = model(ids)
        nb4.add_lora(model, rank=4, alpha=8, blocks=[4, 5])
        assert torch.equal(model(ids), base)  # B starts at zero: the update is exactly zero
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        assert trainable and all(name.startswith(("blocks.4.", "blocks.5.")) and ".lora_" in name
                                 for name in trainable)
        per_block = 4 * (48 + 64) + 4 * (48 + 32) * 2 + 4 * (64 + 48) + 4 * (48 + 80) * 2 + 4 * (80 + 48)
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * per_block
        for name, param in model.named_parameters():
            if name.endswith("lora_b"):
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
        unmerged = model(ids)
        assert (unmerged - base).abs().max() > 1.0  # the update does something
        nb4.merge_lora(model)
        assert not any(isinstance(m, nb4.LoRALinear) for m in model.modules())
        assert_close_fp32(model(ids), unmerged)


def test_the_saved_folder_reloads_in_both_loaders(nb4, tmp_path):
    """save_hf_folder's folder: our loader gives the very weights (equal logits), transformers' Gemma3ForCausalLM
    (from_pretrained on the folder alone, config.json included) the same logits up to float32 rounding (32 ulps,
    as above: the same functions, other kernels)."""
    from transformers import Gemma3ForCausalLM

    cfg = tiny_config(nb4)
    model, _ = ours_and_reference(nb4, cfg, seed=6)
    tokenizer_file = tmp_path / "tokenizer.json"
    tokenizer_file.write_text("{}")
    folder = nb4.save_hf_folder(model, tmp_path / "saved", tokenizer_file)
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["config.json", "model.safetensors",
                                                                       "tokenizer.json"]
    ids = torch.randint(0, cfg["vocab_size"], (1, 20), generator=torch.Generator().manual_seed(7))
    reloaded = nb4.Gemma3Model(cfg).eval()
    nb4.load_weights_into_gemma(reloaded, f"{folder}/model.safetensors")
    hf = Gemma3ForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        expected = model(ids)
        assert torch.equal(reloaded(ids), expected)
        assert_close_fp32(hf(ids).logits, expected)
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()  # tied, as saved
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["sliding_window"] == cfg["sliding_window"]


def test_the_generator_is_seeded_and_the_held_out_split_shares_nothing(nb4):
    assert nb4.make_examples("train", 20, seed=1) == nb4.make_examples("train", 20, seed=1)
    assert nb4.make_examples("train", 20, seed=1) != nb4.make_examples("train", 20, seed=2)
    train, held_out = nb4.make_examples("train", 2000, seed=1), nb4.make_examples("held_out", 500, seed=2)
    train_text = " ".join(sentence for sentence, _ in train)
    train_answers = [json.loads(answer) for _, answer in train]
    train_names = {word for answer in train_answers for word in answer["person"].split()}
    for _, answer in held_out:
        answer = json.loads(answer)
        assert not set(answer["person"].split()) & train_names
        assert not {word for word in answer["person"].split() if f" {word}" in f" {train_text}"}
        assert answer["time"] not in {a["time"] for a in train_answers}
        assert answer["time"][3:] not in {a["time"][3:] for a in train_answers}  # minutes
    # Sentence patterns: each sentence with its person and time taken out; no held-out pattern occurs in training.
    def patterns(examples):
        found = set()
        for sentence, answer in examples:
            sentence = sentence.replace(json.loads(answer)["person"], "{person}")
            found.add(" ".join("{time}" if any(c.isdigit() for c in word) else word for word in sentence.split()))
        return found

    assert not patterns(train) & patterns(held_out)
    assert len(patterns(held_out)) >= 3
