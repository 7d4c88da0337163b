"""The notebooks kept in step: what two define is defined the same way, except where the KV cache changes it
(each notebook must stand alone, so the shared definitions are written out in each).

A definition is a top-level function, class or constant of an `export` cell, compared as source text.
"""

import ast
import json

from support.notebook_import import NOTEBOOK_1, NOTEBOOK_2, NOTEBOOK_3, NOTEBOOK_4

INTENDED_DIFFERENCES = {  # name: why notebook 2's differs from notebook 1's
    "GroupedQueryAttention": "its forward writes the cache and, decoding, attends over the cache's slots",
    "TransformerBlock": "its forward passes the cache, the positions and the decoding flag to attention",
    "generate_text_stream": "prefill once, then decode with the cache (and an optional compiled decode)",
    "Gemma3Model": "the same model, plus the cache's methods (setup_cache, reset_cache, prefill, decode, decode_step)",
}


def definitions(path):
    """name -> source of each top-level def, class and assignment in the notebook's export cells."""
    found = {}
    for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] != "code" or "export" not in cell.get("metadata", {}).get("tags", []):
            continue
        source = "".join(cell["source"])
        for node in ast.parse(source).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [target.id for target in node.targets if isinstance(target, ast.Name)]
            else:
                continue
            for name in names:
                found[name] = ast.get_source_segment(source, node)
    return found


def test_shared_definitions_are_identical_except_the_intended_ones():
    first, second = definitions(NOTEBOOK_1), definitions(NOTEBOOK_2)
    differ = sorted(name for name in set(first) & set(second) if first[name] != second[name])
    assert differ == sorted(INTENDED_DIFFERENCES), (
        "Definitions that differ between the notebooks: " + ", ".join(differ)
        + ". Make them the same, or add the name to INTENDED_DIFFERENCES with the reason.")


def test_the_int8_notebook_defines_the_cache_notebooks_model_the_same_way():
    """The int8 notebook writes out the KV-cache notebook's model, generation and loading again, unchanged."""
    second, third = definitions(NOTEBOOK_2), definitions(NOTEBOOK_3)
    missing = sorted(name for name in ("Gemma3Model", "KVCache", "check_decode", "load_weights_into_gemma",
                                       "generate_text_stream", "compile_decode") if name not in third)
    assert not missing, f"the int8 notebook lacks {missing}"
    differ = sorted(name for name in set(second) & set(third) if second[name] != third[name])
    assert not differ, "Definitions that differ between the KV-cache and int8 notebooks: " + ", ".join(differ)


def test_the_intended_differences_are_definitions_of_both():
    first, second = definitions(NOTEBOOK_1), definitions(NOTEBOOK_2)
    assert set(INTENDED_DIFFERENCES) <= set(first) & set(second)


FINETUNE_DIFFERENCES = {}  # name: why the fine-tuning notebook's differs from notebook 1's (none so far)


def test_the_finetuning_notebook_defines_notebook_1s_model_the_same_way():
    """The fine-tuning notebook writes out notebook 1's model, loader, tokenizer, generation and perplexity again,
    unchanged except the listed differences."""
    first, fourth = definitions(NOTEBOOK_1), definitions(NOTEBOOK_4)
    missing = sorted(name for name in ("GEMMA3_CONFIG_270M", "Gemma3Model", "TransformerBlock", "GroupedQueryAttention",
                                       "load_weights_into_gemma", "hf_name_of", "Gemma3Tokenizer",
                                       "generate_text_stream", "LAB_PASSAGE", "perplexity") if name not in fourth)
    assert not missing, f"the fine-tuning notebook lacks {missing}"
    differ = sorted(name for name in set(first) & set(fourth) if first[name] != fourth[name])
    assert differ == sorted(FINETUNE_DIFFERENCES), (
        "Definitions that differ between notebook 1 and the fine-tuning notebook: " + ", ".join(differ))
