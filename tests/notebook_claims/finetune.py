"""What the fine-tuning notebook's run shows on the real weights, asserted on that run: `results`, the scores,
perplexities and costs its cells record (see conftest.py).

The goal the notebook states: held-out exact match at most 10% before fine-tuning (zero-shot and few-shot prompts)
and at least 90% after, for full fine-tuning and for LoRA. Exact match counts whole answers over 40 held-out
examples, so float32 rounding on another CPU could move it by an example where a near-tie decides one token. The
stored run (0% zero-shot and 2.5% few-shot before, 97.5% full and 100% LoRA after; the same under the unvectorised
kernels, measured while developing) leaves three examples or more of margin on each side.
"""

NOTEBOOK = "standalone-gemma3-finetune.ipynb"
RESULTS = "results"  # {"base": {...}, "full": {...}, "LoRA": {...}}: plain numbers


def arguments(results):
    return {"results": results}


def test_the_base_model_cannot_do_the_task(results):
    assert results["base"]["zero-shot"] <= 0.10 and results["base"]["few-shot"] <= 0.10


def test_full_fine_tuning_reaches_the_goal(results):
    assert results["full"]["exact match"] >= 0.90


def test_lora_reaches_the_goal(results):
    assert results["LoRA"]["exact match"] >= 0.90


def test_lora_trains_a_small_fraction_of_full_fine_tunings_weights(results):
    assert results["LoRA"]["trainable"] < 0.05 * results["full"]["trainable"]


def test_lora_costs_the_lab_passage_less_than_full_fine_tuning(results):
    # The stored run: 30.4 -> 43.1 (full) and 36.9 (LoRA); both rise, LoRA's by half as much.
    base, full, lora = (results[name]["perplexity"] for name in ("base", "full", "LoRA"))
    assert base < lora < full
