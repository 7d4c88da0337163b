"""Gemma 3's tokenizer rebuilt from the vocabulary a GGUF file stores.

Gemma's official `tokenizer.json` is a `tokenizers` BPE model: spaces become U+2581 ("▁") before
anything else, there is no dummy prefix space, unknown characters fall back to their UTF-8 bytes
(`<0x00>`..`<0xFF>`), and `<bos>` is added in front. A GGUF keeps the pieces, their scores and their
types, but no merge list, so we derive it:

- A BPE merge `left + right -> piece` exists for every way of cutting a piece into two pieces that
  are themselves in the vocabulary. Merges are applied lowest rank first, and a piece's id is its
  rank (SentencePiece stores pieces best first), so ranking by the id of the result reproduces the
  official order without sorting anything.
- llama.cpp writes the space-run pieces ("  ", "   ", ...) with real spaces; the model sees spaces as
  "▁", so we spell them "▁▁", "▁▁▁", ... or BPE could never reach them.
- Control pieces (type 3: `<bos>`, `<start_of_turn>`, `<unused0>`, ...) become special added tokens
  and user-defined pieces (type 4: "\\n", "\\n\\n", "\\t\\t", "<table>", ...) plain added tokens, so
  both are matched whole in the raw text (longest first) before BPE sees the rest.

The result encodes exactly like transformers' own GGUF tokenizer (tests/no_arithmetic/test_tokenizer.py).
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE

from .outcomes import Failure, WeightsError

SPACE = "\u2581"  # SentencePiece's visible space
CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types
FIELDS = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
          "tokenizer.ggml.bos_token_id", "tokenizer.ggml.unknown_token_id")


def _strings(field) -> list[str]:
    # `field.contents()` decodes item by item through generic code (~10 s for 262,144 strings);
    # the raw parts hold the UTF-8 bytes directly.
    return [str(bytes(field.parts[i]), "utf-8") for i in field.data]


def _ints(field) -> list[int]:
    return [int(field.parts[i][0]) for i in field.data]


def _derive_merges(pieces: list[str], ids: dict[str, int]) -> list[tuple[str, str]]:
    """Every two-piece split of every piece, ordered by the resulting piece's id.

    Within one piece, longer left halves come first, the tie order transformers uses too.
    """
    merges = []
    for piece in pieces:
        for cut in range(len(piece) - 1, 0, -1):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                merges.append((left, right))
    return merges


def tokenizer_from_gguf(reader) -> Tokenizer:
    """Build Gemma 3's `tokenizers.Tokenizer` from a `gguf.GGUFReader` of a Gemma 3 GGUF."""
    missing = [name for name in FIELDS if name not in reader.fields]
    if missing:
        raise WeightsError(Failure.NO_TOKENIZER, f"The GGUF has no tokenizer ({', '.join(missing)} missing); it "
                           "cannot supply tokenizer.json.", "Use a Gemma 3 GGUF written by llama.cpp's converter.")
    pieces = _strings(reader.fields["tokenizer.ggml.tokens"])
    types = _ints(reader.fields["tokenizer.ggml.token_type"])
    if len(types) != len(pieces):
        raise WeightsError(Failure.TOKENIZER_INCONSISTENT, f"The GGUF's tokenizer is inconsistent: {len(pieces)} "
                           f"tokens but {len(types)} token types.", "The file may be damaged; rebuild it.")
    pieces = [SPACE * len(p) if p and p.strip(" ") == "" else p for p in pieces]
    ids = {piece: i for i, piece in enumerate(pieces)}
    bos = pieces[_ints(reader.fields["tokenizer.ggml.bos_token_id"])[0]]
    unk = pieces[_ints(reader.fields["tokenizer.ggml.unknown_token_id"])[0]]

    tokenizer = Tokenizer(BPE(vocab=ids, merges=_derive_merges(pieces, ids), unk_token=unk,
                              fuse_unk=True, byte_fallback=True))
    # The only normalization: spaces become "▁". No prefix space, and no pre-tokenizer: Gemma's
    # pieces may span several spaces ("▁▁"), so the text must not be cut at spaces before BPE.
    tokenizer.normalizer = normalizers.Replace(" ", SPACE)
    # normalized=False: matched in the raw text, before spaces become "▁". A user typing
    # "<start_of_turn>" gets the control token, as with Google's tokenizer.
    tokenizer.add_special_tokens([AddedToken(p, special=True, normalized=False)
                                  for p, t in zip(pieces, types, strict=True) if t == CONTROL])
    # The space runs are left out: BPE already joins any run of up to 31 "▁" into one piece, and as
    # added tokens they would only ever match a "▁" typed literally (transformers leaves them out too).
    tokenizer.add_tokens([AddedToken(p, special=False, normalized=False)
                          for p, t in zip(pieces, types, strict=True) if t == USER_DEFINED and not p.startswith(SPACE)])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, ids[bos])])
    # "▁" back to spaces, runs of <0xNN> pieces back to UTF-8 text, then one string.
    tokenizer.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(),
                                           decoders.Fuse()])
    return tokenizer
