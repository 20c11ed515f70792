import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from clipmoe_encoder import CLIPMoEError
from clipmoe_encoder.dmu.data import ImageTextDataset, load_records
from clipmoe_encoder.dmu.models import load_preprocessors

from .helpers import make_base, make_image, make_pairs, write_sharegpt


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(str(tmp_path_factory.mktemp("base")))


def test_sharegpt4v_caption_is_second_turn_with_newlines_folded(tmp_path):
    pairs = make_pairs(str(tmp_path), 3)
    path = write_sharegpt(str(tmp_path), pairs)
    records, report = load_records(path)
    assert report["format"] == "sharegpt4v" and report["kept"] == 3
    assert records[0].caption == "a red square on white"
    assert records[0].image == os.path.join(str(tmp_path), "images", "000.png")


def test_llava_caption_is_first_gpt_turn_and_image_root(tmp_path):
    make_pairs(str(tmp_path), 2)
    data = [{"image": "000.png", "conversations": [{"from": "human", "value": "q"}, {"from": "human", "value": "q2"},
                                                   {"from": "gpt", "value": "first answer"}, {"from": "gpt", "value": "second"}]}]
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(data))
    records, _ = load_records(str(path), image_root=str(tmp_path / "images"), fmt="llava")
    assert records[0].caption == "first answer"
    # default roots: the json's folder, then its parent; the error names the image and both
    with pytest.raises(CLIPMoEError, match=rf"record 0: image 000.png is under none of the image roots tried "
                                           rf"\({tmp_path}, {tmp_path.parent}\); pass --image-root"):
        load_records(str(path), fmt="llava")


def test_jsonl_and_bad_lines(tmp_path):
    make_pairs(str(tmp_path), 2)
    path = tmp_path / "d.jsonl"
    path.write_text('{"image": "images/000.png", "caption": "one"}\n\n{"image": "images/001.png", "caption": "two"}\n')
    records, report = load_records(str(path))
    assert [r.caption for r in records] == ["one", "two"] and report["format"] == "jsonl"
    path.write_text('{"image": "images/000.png", "caption": "one"}\n{"image": "images/001.png"}\n')
    with pytest.raises(CLIPMoEError, match=r"d.jsonl: line 2: field 'caption'"):
        load_records(str(path))
    records, report = load_records(str(path), skip_bad=True)
    assert len(records) == 1 and report["bad_record"] == 1


def test_img2dataset_folder_nested_shards(tmp_path):
    for shard, key, caption in [("00000", "000000001", "first"), ("00001/sub", "000000002", "second\nline")]:
        os.makedirs(tmp_path / shard, exist_ok=True)
        make_image(str(tmp_path / shard / f"{key}.jpg"), "red", "dot")
        (tmp_path / shard / f"{key}.txt").write_text(caption)
        (tmp_path / shard / f"{key}.json").write_text("{}")  # img2dataset metadata, ignored
    records, report = load_records(str(tmp_path))
    assert report["format"] == "folder"
    assert [r.caption for r in records] == ["first", "second line"]
    assert records[1].image.endswith(os.path.join("00001", "sub", "000000002.jpg"))


def test_missing_image_and_empty_caption_errors_and_skip_counts(tmp_path):
    pairs = make_pairs(str(tmp_path), 4)
    pairs[1] = ("images/nope.png", "a caption")
    pairs[2] = (pairs[2][0], "  \n ")
    path = write_sharegpt(str(tmp_path), pairs)
    with pytest.raises(CLIPMoEError, match=r"data.json: record 1: image file .*nope.png does not exist"):
        load_records(path)
    pairs[1] = (pairs[0][0], "fine")
    path = write_sharegpt(str(tmp_path), pairs)
    with pytest.raises(CLIPMoEError, match=r"record 2: empty caption"):
        load_records(path)
    pairs[1] = ("images/nope.png", "a caption")
    path = write_sharegpt(str(tmp_path), pairs)
    records, report = load_records(path, skip_bad=True)
    assert len(records) == 2 and report["missing_image"] == 1 and report["empty_caption"] == 1 and report["total"] == 4


def test_corrupt_image_is_found_lazily(tmp_path, base):
    pairs = make_pairs(str(tmp_path), 3)
    (tmp_path / "images" / "001.png").write_bytes(b"not an image at all")
    records, _ = load_records(write_sharegpt(str(tmp_path), pairs))  # exists: passes the up-front check
    tok, proc = load_preprocessors(base)
    with pytest.raises(CLIPMoEError, match=r"001.png: cannot decode image \(sample 1\)"):
        ImageTextDataset(records, proc, tok, 16)[1]
    item = ImageTextDataset(records, proc, tok, 16, skip_bad=True)[1]
    assert not bool(item["valid"]) and item["pixel_values"].shape == (3, 16, 16)
    assert bool(ImageTextDataset(records, proc, tok, 16, skip_bad=True)[0]["valid"])


def test_a_cached_dataset_decodes_each_image_once_and_gives_the_same_items(tmp_path, base, monkeypatch):
    """cache=True (--cache-samples): the items of a dataset without cache, each image decoded on
    its first read only, across epochs."""
    import clipmoe_encoder.dmu.data as data

    pairs = make_pairs(str(tmp_path), 4)
    records, _ = load_records(write_sharegpt(str(tmp_path), pairs))
    tok, proc = load_preprocessors(base)
    decoded = []
    real_decode = data.decode_rgb
    monkeypatch.setattr(data, "decode_rgb", lambda path: decoded.append(path) or real_decode(path))
    plain, cached = ImageTextDataset(records, proc, tok, 16), ImageTextDataset(records, proc, tok, 16, cache=True)
    for _ in range(3):  # epochs
        for i in range(len(records)):
            a, b = plain[i], cached[i]
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len(decoded) == 3 * len(records) + len(records)  # the plain dataset every epoch, the cached one once
    assert sorted(set(decoded)) == sorted(r.image for r in records)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_grayscale_rgba_palette_become_rgb(tmp_path, base, mode):
    path = make_image(str(tmp_path / "x.png"), "green", "square", mode=mode)
    rgb = Image.open(path).convert("RGB")
    (tmp_path / "d.jsonl").write_text(json.dumps({"image": "x.png", "caption": "green square"}) + "\n")
    records, _ = load_records(str(tmp_path / "d.jsonl"))
    tok, proc = load_preprocessors(base)
    item = ImageTextDataset(records, proc, tok, 16)[0]
    assert item["pixel_values"].shape == (3, 16, 16)
    expected = proc(images=rgb, return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(item["pixel_values"], expected)
    if mode == "L":  # a gray image has equal R, G, B before normalisation
        raw = np.asarray(rgb)
        assert (raw[..., 0] == raw[..., 1]).all()
    assert item["input_ids"].shape == (16,) and int(item["attention_mask"].sum()) == len("greensquare") + 2  # chars without the space, plus BOS and EOS
