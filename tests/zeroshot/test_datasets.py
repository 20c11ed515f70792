"""Each reader on a tiny fixture in the real file format, and the bad-input errors."""

import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from clipmoe_encoder import CLIPMoEError
from clipmoe_encoder.zeroshot import datasets as ds
from clipmoe_encoder.zeroshot.cli import read_classification

from .conftest import write_image


# ------------------------------------------------------------------------------------------ Karpathy
def karpathy_coco(tmp_path, sentences_extra=0):
    """dataset_coco.json layout: images under <root>/<filepath>/<filename>."""
    entries = []
    for i, split in enumerate(["test", "train", "test", "val", "restval"]):
        name = f"COCO_val2014_{i:012d}.jpg"
        write_image(tmp_path / "coco" / "val2014" / name, (40 * i, 0, 0))
        n = 5 + (sentences_extra if i == 2 else 0)
        entries.append({"filepath": "val2014", "filename": name, "split": split, "imgid": i, "cocoid": i,
                        "sentences": [{"raw": f"Image {i} caption {j}.", "tokens": ["image"], "imgid": i, "sentid": 5 * i + j}
                                      for j in range(n)]})
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return path


def test_read_karpathy_coco(tmp_path):
    path = karpathy_coco(tmp_path, sentences_extra=2)
    paths, captions = ds.read_karpathy(path, tmp_path / "coco")
    assert [os.path.basename(p) for p in paths] == ["COCO_val2014_000000000000.jpg", "COCO_val2014_000000000002.jpg"]
    assert paths[0] == os.path.join(tmp_path / "coco", "val2014", "COCO_val2014_000000000000.jpg")
    assert captions[0] == [f"Image 0 caption {j}." for j in range(5)]
    assert len(captions[1]) == 5  # the 7-caption image keeps its first 5
    _, all_caps = ds.read_karpathy(path, tmp_path / "coco", captions_per_image=None)
    assert len(all_caps[1]) == 7
    # the val2014 folder itself also works as image root; other splits by name
    paths, _ = ds.read_karpathy(path, tmp_path / "coco" / "val2014", split="val")
    assert paths == [os.path.join(tmp_path / "coco" / "val2014", "COCO_val2014_000000000003.jpg")]


def test_read_karpathy_flickr(tmp_path):
    entries = [{"filename": f"{1000 + i}.jpg", "split": "test" if i != 1 else "train",
                "sentences": [{"raw": f"flickr {i} {j}"} for j in range(5)]} for i in range(3)]
    for e in entries:
        write_image(tmp_path / "flickr30k-images" / e["filename"], fmt="JPEG")
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": entries}))
    paths, captions = ds.read_karpathy(tmp_path / "dataset_flickr30k.json", tmp_path / "flickr30k-images")
    assert [os.path.basename(p) for p in paths] == ["1000.jpg", "1002.jpg"]
    assert captions[1] == [f"flickr 2 {j}" for j in range(5)]


def test_read_karpathy_errors(tmp_path):
    path = karpathy_coco(tmp_path)
    with pytest.raises(CLIPMoEError, match="no such file"):
        ds.read_karpathy(tmp_path / "nope.json", tmp_path)
    with pytest.raises(CLIPMoEError, match="no such directory"):
        ds.read_karpathy(path, tmp_path / "nope")
    with pytest.raises(CLIPMoEError, match="no images with split 'testing'"):
        ds.read_karpathy(path, tmp_path / "coco", split="testing")
    data = json.loads(path.read_text())
    del data["images"][2]["sentences"][1]["raw"]
    path.write_text(json.dumps(data))
    with pytest.raises(CLIPMoEError, match=r"dataset_coco.json: images\[2\].sentences\[1\]: missing field 'raw'"):
        ds.read_karpathy(path, tmp_path / "coco")
    path.write_text(json.dumps({"imgs": []}))
    with pytest.raises(CLIPMoEError, match="missing field 'images'"):
        ds.read_karpathy(path, tmp_path / "coco")
    path.write_text("{not json")
    with pytest.raises(CLIPMoEError, match="not valid JSON"):
        ds.read_karpathy(path, tmp_path / "coco")


def test_read_karpathy_missing_image(tmp_path):
    path = karpathy_coco(tmp_path)
    os.remove(tmp_path / "coco" / "val2014" / "COCO_val2014_000000000002.jpg")
    with pytest.raises(CLIPMoEError, match=r"images\[2\]: image .*val2014/COCO_val2014_000000000002.jpg does not exist"):
        ds.read_karpathy(path, tmp_path / "coco")


# ------------------------------------------------------------------------------------------ COCO val2017
def coco_val2017(tmp_path):
    images = [{"id": 139, "file_name": "000000000139.jpg", "height": 16, "width": 20},
              {"id": 285, "file_name": "000000000285.jpg", "height": 16, "width": 20},
              {"id": 632, "file_name": "000000000632.jpg", "height": 16, "width": 20}]
    for im in images:
        write_image(tmp_path / "val2017" / im["file_name"], fmt="JPEG")
    # interleaved annotations; image 285 has 6 captions, image 632 none
    annotations = []
    for j in range(6):
        annotations.append({"image_id": 285, "id": 100 + j, "caption": f"bear {j} "})
        if j < 5:
            annotations.append({"image_id": 139, "id": 200 + j, "caption": f"room {j}"})
    path = tmp_path / "annotations" / "captions_val2017.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"info": {}, "images": images, "annotations": annotations}))
    return path


def test_read_coco_captions(tmp_path):
    path = coco_val2017(tmp_path)
    paths, captions = ds.read_coco_captions(path, tmp_path / "val2017")
    assert paths == [os.path.join(tmp_path / "val2017", "000000000139.jpg"), os.path.join(tmp_path / "val2017", "000000000285.jpg")]
    assert captions == [[f"room {j}" for j in range(5)], [f"bear {j}" for j in range(5)]]
    assert len(ds.read_coco_captions(path, tmp_path / "val2017", captions_per_image=None)[1][1]) == 6


def test_read_coco_captions_errors(tmp_path):
    path = coco_val2017(tmp_path)
    data = json.loads(path.read_text())
    data["annotations"][3]["image_id"] = 999
    path.write_text(json.dumps(data))
    with pytest.raises(CLIPMoEError, match=r"annotations\[3\]: image_id 999 is not in 'images'"):
        ds.read_coco_captions(path, tmp_path / "val2017")
    data["annotations"][3] = {"image_id": 139}
    path.write_text(json.dumps(data))
    with pytest.raises(CLIPMoEError, match=r"captions_val2017.json: annotations\[3\]: missing field 'caption'"):
        ds.read_coco_captions(path, tmp_path / "val2017")
    del data["annotations"]
    path.write_text(json.dumps(data))
    with pytest.raises(CLIPMoEError, match="missing field 'annotations'"):
        ds.read_coco_captions(path, tmp_path / "val2017")


# ------------------------------------------------------------------------------------------ Flickr token
def test_read_flickr_token(tmp_path):
    for name in ("1000092795.jpg", "10002456.jpg"):
        write_image(tmp_path / "flickr30k-images" / name, fmt="JPEG")
    lines = ["1000092795.jpg#0\tTwo young guys with shaggy hair .", "10002456.jpg#1\tWorkers look down .",
             "1000092795.jpg#1\tTwo young , White males are outside .", "10002456.jpg#0\tSeveral men in hard hats .", ""]
    token = tmp_path / "results_20130124.token"
    token.write_text("\n".join(lines))
    paths, captions = ds.read_flickr_token(token, tmp_path / "flickr30k-images")
    assert [os.path.basename(p) for p in paths] == ["1000092795.jpg", "10002456.jpg"]
    # grouped per image, in caption-index order (#0 before #1 whatever the line order)
    assert captions == [["Two young guys with shaggy hair .", "Two young , White males are outside ."],
                        ["Several men in hard hats .", "Workers look down ."]]
    token.write_text("1000092795.jpg#0\tfine\n1000092795.jpg caption without index\n")
    with pytest.raises(CLIPMoEError, match="results_20130124.token: line 2: expected"):
        ds.read_flickr_token(token, tmp_path / "flickr30k-images")
    token.write_text("404.jpg#0\tgone\n")
    with pytest.raises(CLIPMoEError, match="image 404.jpg: image .*404.jpg does not exist"):
        ds.read_flickr_token(token, tmp_path / "flickr30k-images")


# ------------------------------------------------------------------------------------------ image-text JSON
def test_read_image_text_json(tmp_path):
    write_image(tmp_path / "imgs" / "a.png")
    write_image(tmp_path / "imgs" / "b.png")
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([{"image": "imgs/a.png", "caption": "first"}, {"image": "imgs/b.png", "captions": ["x", "y"]},
                                {"image": "imgs/a.png", "caption": ["second", "third"]}]))
    paths, captions, report = ds.read_image_text_json(path)  # relative to the JSON's folder
    assert paths == [os.path.join(tmp_path, "imgs/a.png"), os.path.join(tmp_path, "imgs/b.png")]
    assert captions == [["first", "second", "third"], ["x", "y"]]
    assert report["total"] == report["kept"] == 5  # one record per caption, as DMU reads them
    path2 = tmp_path / "other" / "pairs.json"
    path2.parent.mkdir()
    path2.write_text(json.dumps([{"image": "a.png", "caption": "z"}]))
    assert ds.read_image_text_json(path2, tmp_path / "imgs")[0] == [os.path.join(tmp_path / "imgs", "a.png")]
    path.write_text(json.dumps([{"image": "imgs/a.png", "caption": "ok"}, {"image": "imgs/b.png"}]))
    with pytest.raises(CLIPMoEError, match="pairs.json: record 1: field 'conversations' .* or 'caption' is missing"):
        ds.read_image_text_json(path)
    path.write_text(json.dumps([{"image": "imgs/a.png", "captions": []}]))
    with pytest.raises(CLIPMoEError, match="non-empty list of strings"):
        ds.read_image_text_json(path)
    path.write_text(json.dumps({"image": "imgs/a.png", "caption": "x"}))
    with pytest.raises(CLIPMoEError, match="one JSON dict, expected a JSON list"):
        ds.read_image_text_json(path)
    path.write_text(json.dumps([{"image": "imgs/c.png", "caption": "x"}]))
    with pytest.raises(CLIPMoEError, match="record 0: image imgs/c.png is under none of the image roots tried"):
        ds.read_image_text_json(path)


# ------------------------------------------------------------------------------------------ class folders
def imagenet_folder(root):
    for wnid, n in (("n01440764", 2), ("n01443537", 1), ("n01484850", 3)):
        for i in range(n):
            write_image(root / wnid / f"ILSVRC2012_val_{wnid}_{i}.JPEG", fmt="JPEG")
    (root / "n01484850" / "notes.txt").write_text("not an image")
    return root


def test_read_class_folder(tmp_path):
    root = imagenet_folder(tmp_path / "val")
    write_image(root / "n01443537" / "nested" / "deep.png")  # found recursively, like ImageFolder
    paths, labels, classes = ds.read_class_folder(root)
    assert classes == ["n01440764", "n01443537", "n01484850"]
    assert labels == [0, 0, 1, 1, 2, 2, 2]
    assert os.path.basename(paths[3]) == "deep.png" and all(not p.endswith(".txt") for p in paths)
    with pytest.raises(CLIPMoEError, match="no class sub-folders"):
        ds.read_class_folder(root / "n01440764")
    (root / "n99999999").mkdir()
    with pytest.raises(CLIPMoEError, match="n99999999: class folder holds no images"):
        ds.read_class_folder(root)


def test_classnames_files(tmp_path):
    root = imagenet_folder(tmp_path / "imagenet" / "val")
    lines = tmp_path / "names.txt"
    lines.write_text("tench\ngoldfish\ngreat white shark\n")
    # --dataset imagenet accepts the root holding val/
    _, _, names = read_classification("imagenet", str(tmp_path / "imagenet"), str(lines))
    assert names == ["tench", "goldfish", "great white shark"]
    mapping = tmp_path / "names.json"
    mapping.write_text(json.dumps({"n01484850": "shark", "n01440764": "tench", "n01443537": "goldfish"}))
    assert read_classification("folder", str(root), str(mapping))[2] == ["tench", "goldfish", "shark"]
    # without names: folder names, underscores as spaces
    assert read_classification("folder", str(root))[2] == ["n01440764", "n01443537", "n01484850"]
    assert ds.folder_classnames(["golden_retriever"]) == ["golden retriever"]
    lines.write_text("tench\ngoldfish\n")
    with pytest.raises(CLIPMoEError, match="2 class names for 3 class folders"):
        read_classification("folder", str(root), str(lines))
    mapping.write_text(json.dumps({"n01440764": "tench"}))
    with pytest.raises(CLIPMoEError, match="no name for class folder 'n01443537'"):
        read_classification("folder", str(root), str(mapping))


# ------------------------------------------------------------------------------------------ CIFAR
def write_cifar(root, which="cifar10", n=4, protocol=2):
    """The authors' layout: a pickled dict with bytes keys, 'data' N x 3072 uint8, channel-major."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    data = images.transpose(0, 3, 1, 2).reshape(n, 3072)
    if which == "cifar10":
        folder, batch, meta = root / "cifar-10-batches-py", "test_batch", "batches.meta"
        content = {b"batch_label": b"testing batch 1 of 1", b"labels": [3, 1, 0, 2][:n], b"data": data,
                   b"filenames": [b"x.png"] * n}
        names = {b"label_names": [b"airplane", b"automobile", b"bird", b"cat"], b"num_vis": 3072}
    else:
        folder, batch, meta = root / "cifar-100-python", "test", "meta"
        content = {b"fine_labels": [4, 0, 2, 1][:n], b"coarse_labels": [0] * n, b"data": data}
        names = {b"fine_label_names": [b"apple", b"aquarium_fish", b"baby", b"bear", b"sweet_pepper"],
                 b"coarse_label_names": [b"x"]}
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / batch, "wb") as f:
        pickle.dump(content, f, protocol=protocol)
    with open(folder / meta, "wb") as f:
        pickle.dump(names, f, protocol=protocol)
    return folder, images


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_read_cifar10(tmp_path, protocol):
    folder, images = write_cifar(tmp_path, protocol=protocol)
    for root in (tmp_path, folder):  # the batches folder or its parent
        arrays, labels, names = ds.read_cifar(root, "cifar10")
        assert labels == [3, 1, 0, 2] and names == ["airplane", "automobile", "bird", "cat"]
        assert len(arrays) == 4 and np.array_equal(arrays[2], images[2])
        image = ds.load_image(arrays[1])
        assert image.size == (32, 32) and image.getpixel((5, 7)) == tuple(images[1][7, 5])


def test_read_cifar100(tmp_path):
    _, images = write_cifar(tmp_path, "cifar100")
    arrays, labels, names = ds.read_cifar(tmp_path, "cifar100")
    assert labels == [4, 0, 2, 1] and names[1] == "aquarium fish" and names[4] == "sweet pepper"
    assert np.array_equal(arrays[3], images[3])


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_read_cifar_refuses_code_and_bad_files(tmp_path):
    folder, _ = write_cifar(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": _Exploit(), b"labels": []}, f)
    with pytest.raises(CLIPMoEError, match="test_batch: refused to unpickle.*system"):
        ds.read_cifar(tmp_path, "cifar10")
    (folder / "test_batch").write_bytes(b"\x80\x02}q\x00")  # truncated pickle
    with pytest.raises(CLIPMoEError, match="test_batch: not a readable CIFAR python batch"):
        ds.read_cifar(tmp_path, "cifar10")
    write_cifar(tmp_path)
    os.remove(folder / "batches.meta")
    with pytest.raises(CLIPMoEError, match="batches.meta: no such file"):
        ds.read_cifar(tmp_path, "cifar10")
    write_cifar(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8)}, f)
    with pytest.raises(CLIPMoEError, match="test_batch: missing field 'labels'"):
        ds.read_cifar(tmp_path, "cifar10")
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 7]}, f)
    with pytest.raises(CLIPMoEError, match="labels run 0..7 but .*batches.meta names 4 classes"):
        ds.read_cifar(tmp_path, "cifar10")
    with pytest.raises(CLIPMoEError, match="cifar-100"):
        ds.read_cifar(tmp_path, "cifar100")  # no cifar-100-python here: names the missing file


# ------------------------------------------------------------------------------------------ images
def test_load_image_modes_and_errors(tmp_path):
    rgba = write_image(tmp_path / "rgba.png", (10, 20, 30), mode="RGBA")
    gray = write_image(tmp_path / "gray.png", (100, 100, 100), mode="L")
    assert ds.load_image(rgba).mode == "RGB" and ds.load_image(rgba).getpixel((0, 0)) == (10, 20, 30)
    assert ds.load_image(str(gray)).getpixel((0, 0)) == (100, 100, 100)
    assert ds.load_image(Image.new("P", (3, 3))).mode == "RGB"
    assert ds.load_image(np.zeros((4, 5), np.uint8)).size == (5, 4)
    with pytest.raises(CLIPMoEError, match="missing.png: image file not found"):
        ds.load_image(tmp_path / "missing.png")
    (tmp_path / "corrupt.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(CLIPMoEError, match="corrupt.jpg: cannot decode the image"):
        ds.load_image(tmp_path / "corrupt.jpg")
    good = write_image(tmp_path / "big.png", size=(64, 64))
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:60])
    with pytest.raises(CLIPMoEError, match="truncated.png: cannot decode the image"):
        ds.load_image(tmp_path / "truncated.png")
    with pytest.raises(CLIPMoEError, match="from a int"):
        ds.load_image(3)
