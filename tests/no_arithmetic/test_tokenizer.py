"""The tokenizer rebuilt from the GGUF must encode like transformers' own GGUF tokenizer.

transformers reads the same GGUF with independent code (`AutoTokenizer.from_pretrained(...,
gguf_file=...)`), so it is the reference for every id compared here. The only hard-coded ids are
the ones stated in docs (pad, eos, bos, chat markers, "\\n", the first byte piece). Both sides read the
file with the gguf package; transformers is given the session's parsed reader (`gguf_parsed_once`)
instead of parsing the vocabulary a second time.
"""

import random
from types import SimpleNamespace

import pytest
from reference import gguf_parsed_once
from tokenizers import Tokenizer

from gemma3_weights import Failure, WeightsError
from gemma3_weights.gguf_tokenizer import tokenizer_from_gguf

SEEDS = [
    # English prose
    "The quick brown fox jumps over the lazy dog.",
    "It was the best of times, it was the worst of times; it was the age of wisdom...",
    "Don't you think it's 3:45 p.m. already? I'd say we're late -- very late!",
    "Hello, world",
    "a",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "Prices rose 12.5% to $1,234,567.89 in Q3 2024 (vs. 9.8% in 2023).",
    # code
    "def add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n    return a + b\n",
    ("class Foo:\n    def __init__(self):\n        self.x = [i ** 2 for i in range(10)]\n\n\n"
     "if __name__ == '__main__':\n\tFoo()\n"),
    '{"name": "gemma", "layers": 18, "nested": {"list": [1, 2.5, null, true]}, "empty": {}}',
    "#include <stdio.h>\n\nint main(void) {\n    printf(\"%d\\n\", 42);\n    return 0;\n}\n",
    "for (int i = 0; i < n; ++i) { a[i] = b[i] << 2 | c[i] & 0xFF; }",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;",
    "<table><tr><td>1</td></tr></table> <div class=\"x\"><b>bold</b></div>",
    # whitespace and newlines
    "word1     word2          word3",
    "\tindented\n\t\tdouble\n\t \tmixed",
    "line one\nline two\n\nparagraph\n\n\n\nfar away",
    "windows\r\nline\r\nendings\r\n\r\n",
    "old mac\rline\rendings",
    "form\ffeed and\vvertical tab",
    # scripts
    "日本語のテキストと漢字、そしてカタカナ。",
    "中文句子，包含标点符号。简体字和繁體字。",
    "한국어 문장입니다.",
    "مرحبا بالعالم، هذه جملة عربية.",
    "नमस्ते दुनिया, यह एक हिंदी वाक्य है।",
    "Привет, мир! Ελληνικά γράμματα. עברית. ภาษาไทย",
    "e\u0301 vs \u00e9, \ufb01ne ligature, \u212b vs \u00c5",
    # emoji
    "👨‍👩‍👧‍👦 family, 👍🏽 thumbs, 🏳️‍🌈 flag, 🧑🏿‍💻 coder",
    "😀😃😄😁😆😅😂🤣",
    # rare Unicode needing byte fallback
    "\U0001d518\U0001d52b\U0001d526\U0001d520\U0001d52c\U0001d521\U0001d522 \U0001f9ec\U000e0041",
    "\x00\x01\x7f control chars \u200b zero width \ufeff bom \ue000 private",
    "∀x∈ℝ: x² ≥ 0 ⇒ √(x²) = |x|",
    "\U00010348\U00010349 gothic, \U0001f0a1 card, \U00016a40 mro",
    # special tokens written in text
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n",
    "<bos>text<eos><pad><unk><mask>",
    "<unused17> [multimodal] <start_of_image><end_of_image>",
    "<start_of_turn almost<end_of_turn > </start_of_turn>",
    "<0x41> looks like a byte piece",
    # literal SentencePiece space (cannot round-trip: it decodes to a space)
    "\u2581already\u2581spaced \u2581\u2581\u2581x",
    "",
]

SEPARATORS = ["", " ", "  ", "\n", "\n\n", "\t", " \n ", "\r\n"]
RUNS = [" ", "\t", "\n", "\r\n", " \t", "\n ", "\u3000"]
RUN_LENGTHS = [1, 2, 3, 5, 8, 16, 30, 31, 32, 33, 40, 64]


def build_strings() -> list[str]:
    """A few hundred strings built deterministically from the seeds."""
    rng = random.Random(270)
    out = list(SEEDS)
    for run in RUNS:  # whitespace runs around the lengths the vocabulary stops at (31)
        for n in RUN_LENGTHS:
            out += [run * n, f"a{run * n}b"]
    for s in SEEDS[:-1]:  # leading/trailing whitespace, and cuts anywhere (even inside emoji)
        out += [" " + s, s + " ", "   " + s + "  ", "\n" + s + "\n"]
        out += [s[: len(s) // 3], s[len(s) // 3:], s[rng.randrange(len(s) + 1):]]
    for _ in range(80):  # mixtures of scripts, code and special tokens
        a, b, c = rng.sample(SEEDS, 3)
        out.append(rng.choice(SEPARATORS).join([a, b, c]))
    return list(dict.fromkeys(out))  # unique, order kept


STRINGS = build_strings()


@pytest.fixture(scope="module")
def ours(gguf_reader):
    return tokenizer_from_gguf(gguf_reader)


@pytest.fixture(scope="module")
def reference(gguf_path, gguf_reader):
    transformers = pytest.importorskip("transformers")
    with gguf_parsed_once(gguf_reader, gguf_path):
        return transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)


def test_enough_varied_strings():
    assert len(STRINGS) >= 300
    assert "" in STRINGS and any(len(s) > 200 for s in STRINGS)


@pytest.mark.slow  # the reference: transformers builds its tokenizer from the 262,144-token vocabulary (about 10 s)
def test_ids_match_transformers(ours, reference):
    mismatches = []
    for s in STRINGS:
        expected = reference(s).input_ids
        got = ours.encode(s).ids
        if got != expected:
            mismatches.append((s, got, expected))
    assert not mismatches, f"{len(mismatches)} of {len(STRINGS)} differ, e.g. {mismatches[:3]}"


@pytest.mark.slow  # the reference: transformers builds its tokenizer from the 262,144-token vocabulary (about 10 s)
def test_decode_round_trips(ours, reference):
    failures = []
    for s in STRINGS:
        ids = ours.encode(s).ids
        if ids[0] != 2:
            failures.append((s, "no <bos> first"))
        if "\u2581" not in s and ours.decode(ids[1:], skip_special_tokens=False) != s:
            failures.append((s, ours.decode(ids[1:], skip_special_tokens=False)))
        # skip_special_tokens drops <bos> and control tokens, the way transformers does
        if ours.decode(ids, skip_special_tokens=True) != reference.decode(ids, skip_special_tokens=True):
            failures.append((s, ours.decode(ids, skip_special_tokens=True)))
    assert not failures, f"{len(failures)} failures, e.g. {failures[:3]}"


@pytest.mark.slow  # ours: built from the GGUF's vocabulary, whose parse takes about 20 s
def test_saved_json_reloads_identically(ours, tmp_path):
    path = tmp_path / "tokenizer.json"
    ours.save(str(path))
    reloaded = Tokenizer.from_file(str(path))
    for s in STRINGS:
        ids = ours.encode(s).ids
        assert reloaded.encode(s).ids == ids, s
        assert reloaded.decode(ids, skip_special_tokens=False) == ours.decode(ids, skip_special_tokens=False)
    assert reloaded.get_vocab_size() == ours.get_vocab_size() == 262_144


@pytest.mark.slow  # ours: built from the GGUF's vocabulary, whose parse takes about 20 s
def test_documented_ids(ours):
    expected = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "<start_of_turn>": 105,
                "<end_of_turn>": 106, "\n": 107, "<0x00>": 238, "<0xFF>": 493}
    assert {token: ours.token_to_id(token) for token in expected} == expected
    assert ours.encode("<start_of_turn>user\n").ids[:2] == [2, 105]
    assert ours.encode("\n").ids == [2, 107]
    assert ours.encode("\x00").ids == [2, 238]  # byte fallback
    assert ours.encode("").ids == [2]  # BOS only, never EOS


def test_missing_tokenizer_fields_raise_weights_error():
    with pytest.raises(WeightsError, match="tokenizer.ggml.tokens") as err:
        tokenizer_from_gguf(SimpleNamespace(fields={}))
    assert err.value.kind is Failure.NO_TOKENIZER
