"""A word-level tokenizer for the demo world's closed vocabulary, as a transformers fast tokenizer.

Why word-level: the world has a few dozen words, so a BPE would only add sequence length. The
ids are laid out so the CLIP text tower's pooling works: it takes the hidden state at the *first*
EOS (transformers and CLIP-MoE both do, unless eos_token_id == 2, the legacy "largest id" rule),
so EOS must not be id 2, and padding uses its own id.
"""

from __future__ import annotations

from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIALS = (PAD, UNK, BOS, EOS)  # ids 0, 1, 2, 3: EOS is 3, never the legacy 2


def build_tokenizer(words: list[str], model_max_length: int = 64) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for w in words:
        vocab.setdefault(w.lower(), len(vocab))
    core = Tokenizer(WordLevel(vocab, unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()  # words and punctuation runs: "circle." -> circle .
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", pair=f"{BOS} $A {EOS} $B {EOS}",
        special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        model_max_length=model_max_length, padding_side="right",
    )


def special_ids(tokenizer) -> dict[str, int]:
    """The ids a CLIP text config must carry for this tokenizer."""
    return {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id}
