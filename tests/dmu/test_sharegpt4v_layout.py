"""ShareGPT4V's published layout: the JSON in data/sharegpt4v/, the images under data/coco, data/sam,
data/llava, ... with paths like "coco/train2017/x.jpg" relative to data/ (ShareGPT4V's and LLaVA's
training scripts pass --image_folder data). The default image root finds them; a missing image is
named with the roots tried, before anything slow."""

import json
import os

import pytest
from PIL import Image

from clipmoe_encoder.cli import main
from clipmoe_encoder.dmu.data import load_records
from clipmoe_encoder.errors import CLIPMoEError

IMAGES = ["coco/train2017/000000000009.jpg", "sam/images/sa_1.jpg", "llava/llava_pretrain/images/00000/1.jpg",
          "wikiart/images/a.jpg"]


@pytest.fixture
def layout(tmp_path):
    data = tmp_path / "data"
    for i, rel in enumerate(IMAGES):
        os.makedirs(data / os.path.dirname(rel), exist_ok=True)
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(data / rel)
    records = [{"id": str(i), "image": rel, "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                                              {"from": "gpt", "value": f"caption {i}"}]}
               for i, rel in enumerate(IMAGES)]
    os.makedirs(data / "sharegpt4v")
    path = data / "sharegpt4v" / "share-captioner_coco_lcs_sam_1246k_1107.json"
    path.write_text(json.dumps(records))
    return data, path


def test_default_root_is_the_data_folder_above_the_json(layout):
    data, path = layout
    records, report = load_records(str(path))
    assert report["kept"] == len(IMAGES)
    assert [r.image for r in records] == [str(data / rel) for rel in IMAGES]
    assert [r.caption for r in records] == [f"caption {i}" for i in range(len(IMAGES))]


def test_json_next_to_its_images_keeps_the_json_folder(layout):
    data, _ = layout
    records = [{"image": "coco/train2017/000000000009.jpg", "caption": "next to it"}]
    (data / "local.json").write_text(json.dumps(records))
    assert load_records(str(data / "local.json"))[0][0].image == str(data / IMAGES[0])


def test_missing_image_names_it_and_the_roots_tried(layout):
    data, path = layout
    os.remove(data / IMAGES[0])
    with pytest.raises(CLIPMoEError) as err:
        load_records(str(path))
    assert str(err.value) == (f"{path}: record 0: image {IMAGES[0]} is under none of the image roots tried "
                              f"({data / 'sharegpt4v'}, {data}); pass --image-root with the folder its path starts from "
                              "(or --skip-bad to leave such records out)")
    # skip_bad: the first image found decides the root, the missing one is counted
    records, report = load_records(str(path), skip_bad=True)
    assert report["missing_image"] == 1 and records[0].image == str(data / IMAGES[1])
    # a later missing image under the chosen root names that root
    (data / IMAGES[0]).parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(data / IMAGES[0])
    os.remove(data / IMAGES[2])
    with pytest.raises(CLIPMoEError, match=rf"record 2: image file {data / IMAGES[2]} does not exist \(image root {data}\)"):
        load_records(str(path))


def test_cli_check_names_the_missing_image_before_anything_slow(layout, tmp_path, capsys):
    data, path = layout
    os.remove(data / IMAGES[0])
    code = main(["dmu", "run", "--base", str(tmp_path / "no-base"), "--data", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"image {IMAGES[0]} is under none of the image roots" in err, err
    assert not os.path.exists(tmp_path / "out")
