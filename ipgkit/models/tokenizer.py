"""The embedded model's character-level tokenizer, built in code as a Hugging Face fast tokenizer.

Every printable ASCII character and the newline is one token, so numbers are spelled digit by digit
(which is what makes carry slips a visible, step-local failure mode) and the vocabulary is tiny.
Because it is a `PreTrainedTokenizerFast`, TransformerLens string APIs (`to_tokens`, `to_string`,
`generate` on strings) work unchanged.
"""

from __future__ import annotations

from functools import lru_cache

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
CHARACTERS = tuple("\n" + "".join(chr(c) for c in range(32, 127)))
VOCAB_SIZE = len(SPECIAL_TOKENS) + len(CHARACTERS)


@lru_cache(maxsize=1)
def _vocab() -> dict[str, int]:
    return {token: index for index, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """Return a fresh character-level tokenizer (left padding, distinct pad/bos/eos ids).

    Example:
        >>> tok = build_char_tokenizer()
        >>> tok.decode(tok("12+3=15")["input_ids"])
        '12+3=15'
    """
    backend = Tokenizer(models.WordLevel(_vocab(), unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
    )
    tokenizer.name_or_path = "ipgkit-char"
    return tokenizer
