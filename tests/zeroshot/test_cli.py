"""`clipmoe eval` end to end on tiny fixtures in the real file formats."""

import json

import pytest
import torch

from clipmoe_encoder.cli import main
from clipmoe_encoder.zeroshot import (
    evaluate_classification,
    evaluate_retrieval,
    load_encoder,
    read_cifar,
    read_karpathy,
)

from .conftest import random_image
from .test_datasets import write_cifar
from .test_metrics import _brute_force

WORDS = ["cat", "dog", "red car", "blue sky", "tree", "boat", "a man", "two birds"]


@pytest.fixture
def coco_karpathy(tmp_path):
    entries = []
    for i in range(6):
        name = f"COCO_val2014_{i:012d}.jpg"
        (tmp_path / "coco" / "val2014").mkdir(parents=True, exist_ok=True)
        random_image(i, size=(48, 36)).save(tmp_path / "coco" / "val2014" / name, format="JPEG")
        entries.append({"filepath": "val2014", "filename": name, "split": "test" if i != 5 else "train",
                        "sentences": [{"raw": f"{WORDS[(i + j) % 8]} and {WORDS[(3 * i + j) % 8]}."} for j in range(5)]})
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": entries}))
    return tmp_path / "dataset_coco.json", tmp_path / "coco"


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_eval_retrieval_json(hf_clip, coco_karpathy, capsys):
    annotations, images = coco_karpathy
    rc = main(["eval", "retrieval", "--model", str(hf_clip[0]), "--dataset", "coco-karpathy", "--annotations", str(annotations),
               "--images", str(images), "--batch-size", "2", "--text-batch-size", "7", "--device", "cpu", "--json"])
    captured = capsys.readouterr()
    assert rc == 0
    result = _last_json(captured.out)
    assert "encoding images" in captured.err  # progress bars on stderr, stdout stays JSON
    assert result["num_images"] == 5 and result["num_texts"] == 25
    assert result["task"] == "retrieval" and result["dataset"] == "coco-karpathy"

    # the same numbers through the API, and recomputed from the embeddings by a brute-force stable sort
    paths, captions = read_karpathy(annotations, images)
    encoder = load_encoder(str(hf_clip[0]))
    api = evaluate_retrieval(encoder, paths, captions)
    owner = [i for i, caps in enumerate(captions) for _ in caps]
    brute = _brute_force(encoder.encode_images(paths), encoder.encode_texts([c for caps in captions for c in caps]), owner, (1, 5, 10))
    for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"):
        assert result[key] == pytest.approx(api[key]) == pytest.approx(brute[key]), key
    assert result["t2i_r5"] == 100.0  # only 5 candidate images


def test_eval_retrieval_human_readable_and_errors(hf_clip, coco_karpathy, capsys):
    annotations, images = coco_karpathy
    base = ["eval", "retrieval", "--model", str(hf_clip[0]), "--annotations", str(annotations), "--no-progress"]
    assert main(base + ["--dataset", "coco-karpathy", "--images", str(images)]) == 0
    out = capsys.readouterr().out
    assert "retrieval on coco-karpathy" in out and "i2t_r1" in out and not out.strip().splitlines()[-1].startswith("{")
    # a missing image: one line naming the file and the entry, exit status 2
    (images / "val2014" / "COCO_val2014_000000000003.jpg").unlink()
    assert main(base + ["--dataset", "coco-karpathy", "--images", str(images), "--json"]) == 2
    err = capsys.readouterr().err
    assert "clipmoe eval retrieval: error:" in err and "images[3]" in err and "COCO_val2014_000000000003.jpg does not exist" in err
    assert "Traceback" not in err
    # a file that exists but does not decode: found when its batch is encoded, named the same way
    (images / "val2014" / "COCO_val2014_000000000003.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    assert main(base + ["--dataset", "coco-karpathy", "--images", str(images)]) == 2
    err = capsys.readouterr().err
    assert "COCO_val2014_000000000003.jpg: cannot decode the image" in err and "Traceback" not in err
    assert main(base + ["--dataset", "flickr-karpathy"]) == 2
    assert "--images is required" in capsys.readouterr().err


def test_eval_classify_cifar_json(hf_clip, tmp_path, capsys):
    write_cifar(tmp_path, "cifar10")
    templates = tmp_path / "templates.txt"
    templates.write_text("# two prompts\na photo of a {}.\n\na blurry {}.\n")
    rc = main(["eval", "classify", "--model", str(hf_clip[0]), "--dataset", "cifar10", "--data", str(tmp_path),
               "--templates", str(templates), "--json", "--no-progress"])
    assert rc == 0
    result = _last_json(capsys.readouterr().out)
    images, labels, names = read_cifar(tmp_path, "cifar10")
    api = evaluate_classification(load_encoder(str(hf_clip[0])), images, labels, names,
                                  templates=["a photo of a {}.", "a blurry {}."])
    assert result["num_templates"] == 2 and result["num_classes"] == 4 and result["num_images"] == 4
    assert result["top1"] == pytest.approx(api["top1"]) and result["top5"] == 100.0  # 4 classes
    templates.write_text("a photo of a thing.\n")
    assert main(["eval", "classify", "--model", str(hf_clip[0]), "--dataset", "cifar10", "--data", str(tmp_path),
                 "--templates", str(templates)]) == 2
    assert "line 1: template 'a photo of a thing.' must contain exactly one '{}'" in capsys.readouterr().err


def test_eval_classify_folder_with_open_clip(tiny_open_clip, tmp_path, capsys):
    name, checkpoint, _ = tiny_open_clip
    for c, cls in enumerate(["golden_retriever", "tabby_cat", "tree_frog"]):
        for k in range(2):
            (tmp_path / "data" / cls).mkdir(parents=True, exist_ok=True)
            random_image(10 * c + k).convert("L" if k else "RGB").save(tmp_path / "data" / cls / f"{k}.png")
    assert main(["eval", "classify", "--model", f"open_clip:{name}:{checkpoint}", "--dataset", "folder",
                 "--data", str(tmp_path / "data"), "--templates", "simple", "--json", "--no-progress"]) == 0
    result = _last_json(capsys.readouterr().out)
    # reference: the classifier built by hand from open_clip itself
    import open_clip

    from clipmoe_encoder.zeroshot import read_class_folder

    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(checkpoint))
    tokenizer = open_clip.get_tokenizer(name)
    paths, labels, _ = read_class_folder(tmp_path / "data")
    with torch.no_grad():
        classifier = model.encode_text(tokenizer([f"a photo of a {n}." for n in ("golden retriever", "tabby cat", "tree frog")]), normalize=True)
        from PIL import Image
        feats = model.encode_image(torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths]), normalize=True)
    predicted = (feats @ classifier.T).argmax(dim=1)
    top1 = 100.0 * (predicted == torch.tensor(labels)).double().mean().item()
    assert result["top1"] == pytest.approx(top1) and result["num_images"] == 6
