"""Tokenizer and image-processor files next to converted weights, so that a directory written by
`convert-official` or `upcycle` loads on its own (`clipmoe eval`, `--vision_tower clipmoe:<dir>`, DMU).

OpenAI CLIP's tokenizer is built offline from the BPE merges open_clip ships
(`bpe_simple_vocab_16e6.txt.gz`), with the vocabulary OpenAI's SimpleTokenizer derives from them:
the 256 byte symbols, the same with the end-of-word mark '</w>', one token per merge (the first
49152-256-2 merges), then <|startoftext|> and <|endoftext|>: 49408 ids in all.
"""

from __future__ import annotations

import gzip
import json
import os

from .errors import CLIPMoEError

OPENAI_VOCAB_SIZE = 49408
_MERGES = OPENAI_VOCAB_SIZE - 2 * 256 - 2  # 48894: what SimpleTokenizer keeps of the merges file
_SPECIAL = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>"}
# any one of these makes a directory a tokenizer transformers can load
TOKENIZER_MARKERS = ("tokenizer.json", "vocab.json", "tokenizer_config.json")


def has_tokenizer(directory) -> bool:
    return os.path.isdir(directory) and any(os.path.isfile(os.path.join(directory, f)) for f in TOKENIZER_MARKERS)


def check_tokenizer_dir(directory, flag: str = "--tokenizer") -> str:
    """A user-given tokenizer directory, checked before anything slow."""
    if not has_tokenizer(directory):
        raise CLIPMoEError(f"{flag} {directory}: no tokenizer.json, vocab.json or tokenizer_config.json there; "
                           "pass a directory saved with a CLIP tokenizer's save_pretrained")
    return directory


def openai_bpe_path() -> str:
    """The OpenAI CLIP BPE merges file shipped inside open_clip."""
    try:
        from open_clip.tokenizer import default_bpe
    except ImportError:
        raise CLIPMoEError("OpenAI CLIP's tokenizer is built from the BPE file open_clip ships, and open_clip is not "
                           "installed: pip install open_clip_torch, or pass --tokenizer DIR (a saved CLIP tokenizer)") from None
    path = default_bpe()
    if not os.path.isfile(path):
        raise CLIPMoEError(f"{path}: missing from the open_clip installation; reinstall open_clip_torch or pass --tokenizer DIR")
    return path


def openai_vocab_and_merges(bpe_path: str) -> tuple[dict[str, int], list[str]]:
    """OpenAI CLIP's token -> id map and merge list, derived from the BPE file as SimpleTokenizer does."""
    from open_clip.tokenizer import bytes_to_unicode

    with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1:1 + _MERGES]  # line 0 is a version header
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += [_SPECIAL["bos_token"], _SPECIAL["eos_token"]]
    return {token: i for i, token in enumerate(tokens)}, merges


def write_openai_tokenizer(dst, max_length: int, bpe_path: str | None = None) -> None:
    """Write OpenAI CLIP's tokenizer (slow and fast files) into `dst` with `max_length` positions."""
    vocab, merges = openai_vocab_and_merges(bpe_path or openai_bpe_path())
    with open(os.path.join(dst, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(dst, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")  # the header transformers' CLIP files carry
    with open(os.path.join(dst, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(dict(_SPECIAL, tokenizer_class="CLIPTokenizer", model_max_length=max_length, do_lower_case=True), f, indent=2)
    # loading and saving once adds tokenizer.json, which the fast tokenizer reads without conversion
    copy_tokenizer(dst, dst, max_length)


def copy_tokenizer(src, dst, max_length: int) -> None:
    """Save `src`'s tokenizer into `dst` with model_max_length = `max_length` (the text positions)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(src)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CLIPMoEError(f"{src}: its tokenizer does not load ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    tokenizer.model_max_length = max_length
    tokenizer.init_kwargs["model_max_length"] = max_length  # what save_pretrained writes on transformers 4
    tokenizer.save_pretrained(dst)


def write_image_processor(dst, vision_config) -> None:
    """OpenAI CLIP preprocessing at the tower's resolution (the processor the converted weights expect)."""
    from .tower import default_image_processor

    default_image_processor(vision_config).save_pretrained(dst)


def complete_directory(dst, config, tokenizer_from=None, bpe_path=None) -> list[str]:
    """Add what `dst` (a saved CLIP-MoE, maybe with its source's processor files) lacks: an image
    processor, and for a two-tower model a tokenizer with model_max_length = the text positions,
    taken from `tokenizer_from` (a directory) or else built as OpenAI's. Returns notes for the user."""
    vision = getattr(config, "vision_config", config)
    text = getattr(config, "text_config", None)
    notes = []
    if not os.path.isfile(os.path.join(dst, "preprocessor_config.json")):
        write_image_processor(dst, vision)
    if text is None:
        return notes
    positions = text.max_position_embeddings
    if tokenizer_from is not None:
        copy_tokenizer(tokenizer_from, dst, positions)
    elif text.vocab_size == OPENAI_VOCAB_SIZE:
        write_openai_tokenizer(dst, positions, bpe_path)
    else:
        notes.append(f"no tokenizer written: the text vocabulary has {text.vocab_size} ids, not OpenAI CLIP's "
                     f"{OPENAI_VOCAB_SIZE}; pass --tokenizer DIR with the model's own tokenizer")
    return notes
