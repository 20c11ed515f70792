"""The world's word-level tokenizer and how it fits the CLIP text tower."""

import re

import torch
from transformers import AutoTokenizer, CLIPModel

from clipmoe_demo import world as W
from clipmoe_demo.encoder.base import QUICK, clip_config
from clipmoe_demo.tokenizer import build_tokenizer

SETTINGS = W.WorldSettings(image_size=32, seed=5)


def captions(n=80):
    out = []
    for i in range(n):
        scene = W.make_scene(SETTINGS, "train", i)[0]
        out += [scene.detailed_caption(), scene.short_caption()]
    return out


def words(text):
    return re.findall(r"\w+|[^\w\s]+", text.lower())


def test_round_trip_without_unknowns():
    tok = build_tokenizer(W.vocabulary())
    for text in captions() + ["A Picture of a Red Circle."]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True).split() == words(text)
    assert tok("a zebra")["input_ids"][2] == tok.unk_token_id


def test_special_ids_suit_clip_pooling():
    tok = build_tokenizer(W.vocabulary())
    ids = {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}
    assert len(ids) == 4
    assert tok.eos_token_id != 2  # 2 switches CLIP's pooling to the legacy "largest id" rule
    assert len(tok) == len(W.vocabulary()) + 4


def test_saved_tokenizer_loads_with_autotokenizer(tmp_path):
    tok = build_tokenizer(W.vocabulary(), model_max_length=40)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = captions(10)
    a = tok(texts, padding=True, return_tensors="pt")
    b = loaded(texts, padding=True, return_tensors="pt")
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["attention_mask"], b["attention_mask"])
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.bos_token_id) == (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id)
    assert loaded.model_max_length == 40


def test_text_tower_pools_at_eos_and_ignores_padding():
    tok = build_tokenizer(W.vocabulary())
    config = clip_config(QUICK, tok)
    assert config.text_config.eos_token_id == tok.eos_token_id and config.text_config.pad_token_id == tok.pad_token_id
    assert config.text_config.vocab_size == len(tok)
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    short, long = "a red circle", "two large blue triangles pointing up at the top left and a small red circle on the right"
    batch = tok([short, long], padding=True, return_tensors="pt")
    alone = tok([short], return_tensors="pt")
    assert batch["input_ids"].shape[1] > alone["input_ids"].shape[1]  # the short one is padded in the batch
    with torch.no_grad():
        padded = model.get_text_features(**batch)
        single = model.get_text_features(**alone)
    padded = padded if isinstance(padded, torch.Tensor) else padded.pooler_output
    single = single if isinstance(single, torch.Tensor) else single.pooler_output
    torch.testing.assert_close(padded[0], single[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(padded[0], padded[1])


def test_captions_fit_the_position_table():
    tok = build_tokenizer(W.vocabulary())
    longest = max(len(tok(t)["input_ids"]) for t in captions(400))
    assert longest <= QUICK.max_positions
