"""`convert-official` and `upcycle` write complete directories: a tokenizer with the model's text
positions (OpenAI CLIP's built offline from open_clip's BPE file, or the source's own) and an image
processor at the tower's resolution, so `clipmoe eval` and the LLaVA tower load them as they are."""

import json
import os
import sys

import pytest
import torch

import clipmoe_encoder as cm
from clipmoe_encoder.cli import main
from clipmoe_encoder.preprocessor_files import OPENAI_VOCAB_SIZE, openai_vocab_and_merges, write_openai_tokenizer
from tests.encoder.conftest import TEXT, VISION, randomize_moe
from tests.encoder.test_checkpoints import official_layout

open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")

SENTENCES = [
    "a photo of a cat.",
    "Hello, World!! It's 3:45pm -- naïve café; 東京タワー 🤖",
    "  multiple   spaces\tand\nnewlines ",
    "don't you'll we've I'M they'd she's",
    "Ünïcödé ΑΒΓ привет, ¿qué? ¡sí! (x+y)=z @user #tag $5.00 50% a/b\\c",
    "a dog" * 30,  # longer than nothing, to see no truncation where none was asked
]


def _openai_ids(text):
    reference = open_clip_tokenizer.SimpleTokenizer()
    return [reference.sot_token_id] + reference.encode(text) + [reference.eot_token_id]


def test_built_tokenizer_gives_open_clip_ids(tmp_path):
    from transformers import AutoTokenizer

    write_openai_tokenizer(tmp_path, 248)
    assert {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"} <= set(os.listdir(tmp_path))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tokenizer) == OPENAI_VOCAB_SIZE and tokenizer.model_max_length == 248
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (49406, 49407)
    for text in SENTENCES:
        assert tokenizer(text)["input_ids"] == _openai_ids(text), text
    # the vocabulary is SimpleTokenizer's, token for token (its special tokens are only named differently)
    vocab, _ = openai_vocab_and_merges(open_clip_tokenizer.default_bpe())
    reference = open_clip_tokenizer.SimpleTokenizer().encoder
    assert [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])][:-2] == [t for t, _ in sorted(reference.items(), key=lambda kv: kv[1])][:-2]


def _openai_vocab_moe(positions=248, seed=0):
    """A tiny CLIP-MoE with OpenAI's vocabulary (the release's text tower, narrowed; one head per 64
    channels, as the converter infers)."""
    torch.manual_seed(seed)
    text = dict(TEXT, hidden_size=64, num_attention_heads=1, vocab_size=OPENAI_VOCAB_SIZE, bos_token_id=49406, eos_token_id=49407, max_position_embeddings=positions)
    config = cm.CLIPMoEConfig(
        vision_config=dict(VISION, hidden_size=64, num_attention_heads=1, num_experts=2, num_experts_per_tok=2),
        text_config=dict(text, num_experts=2, num_experts_per_tok=2, moe_layers=[1]), projection_dim=24)
    return randomize_moe(cm.CLIPMoEModel(config).eval())


def test_convert_official_directory_is_complete(tmp_path, capsys):
    from clipmoe_encoder.tower import load_image_processor, load_vision_config
    from clipmoe_encoder.zeroshot.encoders import load_encoder

    model = _openai_vocab_moe()
    torch.save(official_layout(model), tmp_path / "release.pt")
    assert main(["convert-official", str(tmp_path / "release.pt"), str(tmp_path / "hf")]) == 0
    assert "248 positions" in capsys.readouterr().out
    encoder = load_encoder(str(tmp_path / "hf"))  # what `clipmoe eval --model DIR` does
    assert encoder.tokenizer.model_max_length == 248
    text = "a photo of a cat, on a mat."
    ids = torch.tensor([_openai_ids(text)])
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.get_text_features(input_ids=ids), dim=-1)
    torch.testing.assert_close(encoder.encode_texts([text]), expected, atol=1e-5, rtol=1e-4)
    # the LLaVA tower (--vision_tower clipmoe:<dir>) takes the written processor as it is
    processor = load_image_processor(str(tmp_path / "hf"), load_vision_config(str(tmp_path / "hf")))
    assert processor.crop_size["height"] == VISION["image_size"] and processor.size["shortest_edge"] == VISION["image_size"]
    image = (torch.rand(40, 30, 3) * 255).to(torch.uint8).numpy()
    assert tuple(encoder.encode_images([image]).shape) == (1, 24)


def test_upcycle_text_positions_carries_the_source_tokenizer(tmp_path):
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    text = dict(TEXT, vocab_size=OPENAI_VOCAB_SIZE, bos_token_id=49406, eos_token_id=49407, max_position_embeddings=24)
    CLIPModel(CLIPConfig(text_config=text, vision_config=VISION, projection_dim=24)).save_pretrained(tmp_path / "dense")
    write_openai_tokenizer(tmp_path / "dense", 24)
    assert main(["upcycle", str(tmp_path / "dense"), str(tmp_path / "moe"), "--num-experts", "2", "--top-k", "1",
                 "--text-positions", "36"]) == 0
    assert AutoTokenizer.from_pretrained(tmp_path / "moe").model_max_length == 36
    with open(tmp_path / "moe" / "tokenizer_config.json") as f:
        assert json.load(f)["model_max_length"] == 36
    assert os.path.isfile(tmp_path / "moe" / "preprocessor_config.json")  # none in the source: written


def test_upcycle_vision_only_writes_the_processor(tmp_path):
    from tests.encoder.conftest import tiny_clip

    tiny_clip().save_pretrained(tmp_path / "dense")
    assert main(["upcycle", str(tmp_path / "dense"), str(tmp_path / "tower"), "--vision-only", "--num-experts", "2"]) == 0
    with open(tmp_path / "tower" / "preprocessor_config.json") as f:
        settings = json.load(f)
    assert settings["crop_size"] == {"height": 16, "width": 16} and settings["size"] == {"shortest_edge": 16}
    assert not os.path.exists(tmp_path / "tower" / "tokenizer.json")  # no text tower, no tokenizer


def test_upcycle_with_another_vocabulary_says_no_tokenizer_was_written(tmp_path, capsys):
    from tests.encoder.conftest import tiny_clip

    tiny_clip().save_pretrained(tmp_path / "dense")  # vocabulary of 99 ids, no tokenizer saved
    assert main(["upcycle", str(tmp_path / "dense"), str(tmp_path / "moe"), "--num-experts", "2"]) == 0
    err = capsys.readouterr().err
    assert "note: no tokenizer written" in err and "99 ids" in err and "--tokenizer DIR" in err
    assert not os.path.exists(tmp_path / "moe" / "tokenizer.json")


def test_tokenizer_flag_is_used_and_checked(tmp_path, capsys):
    from transformers import AutoTokenizer

    (tmp_path / "tok").mkdir()
    write_openai_tokenizer(tmp_path / "tok", 77)
    model = _openai_vocab_moe(positions=77)
    torch.save(official_layout(model), tmp_path / "release.pt")
    assert main(["convert-official", str(tmp_path / "release.pt"), str(tmp_path / "hf"), "--tokenizer", str(tmp_path / "tok")]) == 0
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").model_max_length == 77
    capsys.readouterr()
    assert main(["convert-official", str(tmp_path / "release.pt"), str(tmp_path / "hf2"), "--tokenizer", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--tokenizer" in err and "tokenizer.json" in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "hf2")


def test_without_open_clip_one_line_says_what_to_do(tmp_path, capsys, monkeypatch):
    """As in the legacy env: open_clip absent (an import of it fails) and no --tokenizer."""
    monkeypatch.setitem(sys.modules, "open_clip.tokenizer", None)  # makes `from open_clip.tokenizer import` raise ImportError
    (tmp_path / "release.pt").write_bytes(b"not read: the check comes first")
    assert main(["convert-official", str(tmp_path / "release.pt"), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install open_clip_torch" in err and "--tokenizer DIR" in err
    assert "Traceback" not in err and not os.path.exists(tmp_path / "hf")
