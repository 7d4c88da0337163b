"""What the fine-tuning notebook's run shows on the real weights (offline source), asserted on that run: `results`,
the scores, perplexities and costs its cells record (see conftest.py).

The goal the notebook states: held-out exact match at most 10% before fine-tuning (zero-shot and few-shot prompts)
and at least 90% after, for full fine-tuning and for LoRA. Exact match is a count of whole answers over the
held-out examples, so float32 rounding on another CPU can move it by an example at most where a near-tie decides one
token; the stored run's margins are in the notebook.
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
