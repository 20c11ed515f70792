"""Recall@K and top-K accuracy against values worked out by hand, and against a brute-force
stable argsort on random embeddings with ties."""

import math

import pytest
import torch
from PIL import Image

from clipmoe_encoder import CLIPMoEError
from clipmoe_encoder.zeroshot import metrics
from clipmoe_encoder.zeroshot.encoders import ZeroShotEncoder
from clipmoe_encoder.zeroshot.metrics import (
    classification_accuracy,
    evaluate_classification,
    evaluate_retrieval,
    retrieval_recall,
    zero_shot_classifier,
)

# also run in the LLaVA-pinned environment (transformers 4.37.2): no version-specific code, cheap
pytestmark = pytest.mark.legacy

# 3 images (the basis vectors e0, e1, e2) x 2 captions each: caption j's similarity to image i is
# component i of text vector j, so the similarity matrix is readable straight off the vectors.
IMAGES = torch.eye(3)
TEXTS = torch.tensor([
    [0.6, 0.8, 0.0],  # t0, image 0
    [1.0, 0.0, 0.0],  # t1, image 0
    [0.0, 0.8, 0.6],  # t2, image 1
    [0.0, 0.0, 1.0],  # t3, image 1
    [0.0, 0.6, 0.8],  # t4, image 2
    [0.8, 0.0, 0.6],  # t5, image 2
])
OWNER = [0, 0, 1, 1, 2, 2]
#            t0   t1   t2   t3   t4   t5
# image 0: [0.6, 1.0, 0.0, 0.0, 0.0, 0.8]  order t1 t5 t0 ...  -> best caption t1 (its SECOND) at rank 0
# image 1: [0.8, 0.0, 0.8, 0.0, 0.6, 0.0]  order t0 t2 t4 ...  -> t2 ties t0 and loses (lower index first): rank 1
# image 2: [0.0, 0.0, 0.6, 1.0, 0.8, 0.6]  order t3 t4 ...     -> t4 at rank 1
#   i2t ranks [0, 1, 1]: R@1 = 1/3, R@2 = R@5 = R@10 = 3/3
# t2i (column over images, own image):
#   t0 [0.6, 0.8, 0]: image 0 rank 1;   t1 [1, 0, 0]: rank 0;   t2 [0, 0.8, 0.6]: image 1 rank 0
#   t3 [0, 0, 1]: image 1 ties image 0 at 0, both behind image 2, and loses the tie: rank 2
#   t4 [0, 0.6, 0.8]: image 2 rank 0;   t5 [0.8, 0, 0.6]: image 2 rank 1
#   t2i ranks [1, 0, 0, 2, 0, 1]: R@1 = 3/6, R@2 = 5/6, R@5 = R@10 = 6/6
EXPECTED = {"i2t_r1": 100 / 3, "i2t_r2": 100.0, "i2t_r5": 100.0, "i2t_r10": 100.0,
            "t2i_r1": 50.0, "t2i_r2": 500 / 6, "t2i_r5": 100.0, "t2i_r10": 100.0}


def test_retrieval_recall_by_hand():
    out = retrieval_recall(IMAGES, TEXTS, OWNER, ks=(1, 2, 5, 10))
    assert set(out) == set(EXPECTED)
    for key, value in EXPECTED.items():
        assert out[key] == pytest.approx(value), key


def test_retrieval_recall_default_keys():
    out = retrieval_recall(IMAGES, TEXTS, OWNER)
    assert list(out) == ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]
    assert out["i2t_r1"] == pytest.approx(100 / 3) and out["t2i_r1"] == pytest.approx(50.0)


def test_second_caption_is_the_only_hit():
    # image 0's captions: t0 is ranked 3rd of 4 texts, t1 1st: R@1 counts image 0 through t1 alone
    images = torch.eye(2)
    texts = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])  # t0, t1 -> image 0; t2, t3 -> image 1
    # image 0 row: [0, 1, 0, 0.6] -> t1 rank 0, t0 rank 2; image 1 row: [1, 0, 1, 0.8] -> t0 (wrong) wins the tie, t2 rank 1
    out = retrieval_recall(images, texts, [0, 0, 1, 1], ks=(1, 2))
    assert out["i2t_r1"] == pytest.approx(50.0) and out["i2t_r2"] == pytest.approx(100.0)
    # swapping image 0's captions must not change anything: any caption counts
    out2 = retrieval_recall(images, texts[[1, 0, 2, 3]], [0, 0, 1, 1], ks=(1, 2))
    assert out2["i2t_r1"] == pytest.approx(50.0)


def _brute_force(image_emb, text_emb, owner, ks):
    sims = image_emb @ text_emb.T
    order = torch.sort(sims, dim=1, descending=True, stable=True).indices
    i2t = []
    for i in range(sims.shape[0]):
        positions = [p for p, j in enumerate(order[i].tolist()) if owner[j] == i]
        if positions:
            i2t.append(min(positions))
    order_t = torch.sort(sims.T, dim=1, descending=True, stable=True).indices
    t2i = [order_t[j].tolist().index(owner[j]) for j in range(sims.shape[1])]
    out = {f"i2t_r{k}": 100 * sum(r < k for r in i2t) / len(i2t) for k in ks}
    out.update({f"t2i_r{k}": 100 * sum(r < k for r in t2i) / len(t2i) for k in ks})
    return out


@pytest.mark.parametrize("chunk", [1 << 24, 7])
def test_retrieval_recall_matches_stable_argsort(monkeypatch, chunk):
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", chunk)  # 7 forces one-row chunks
    g = torch.Generator().manual_seed(0)
    # coarse integer vectors give many exact ties; image 5 has no caption at all
    image_emb = torch.randint(-1, 2, (12, 3), generator=g).float()
    owner = [i for i in range(12) if i != 5 for _ in range(1 + i % 3)]
    text_emb = torch.randint(-1, 2, (len(owner), 3), generator=g).float()
    ks = (1, 2, 3, 5, 10)
    out = retrieval_recall(image_emb, text_emb, owner, ks=ks)
    expected = _brute_force(image_emb, text_emb, owner, ks)
    for key in expected:
        assert out[key] == pytest.approx(expected[key]), key


def test_retrieval_recall_rejects_bad_ids():
    with pytest.raises(CLIPMoEError, match="text_image_ids"):
        retrieval_recall(IMAGES, TEXTS, [0, 0, 1, 1, 2])
    with pytest.raises(CLIPMoEError, match="0..2"):
        retrieval_recall(IMAGES, TEXTS, [0, 0, 1, 1, 2, 3])
    with pytest.raises(CLIPMoEError, match="same width"):
        retrieval_recall(IMAGES, TEXTS[:, :2], OWNER)


def test_classification_accuracy_by_hand():
    classifier = torch.eye(6)  # logits = the image vectors themselves
    images = torch.tensor([
        [5.0, 4, 3, 2, 1, 0],  # label 0: rank 0 -> top1, top3, top5
        [5.0, 4, 3, 2, 1, 0],  # label 2: rank 2 -> top3, top5
        [5.0, 4, 3, 2, 1, 0],  # label 5: rank 5 -> none
        [1.0, 1, 1, 1, 1, 1],  # label 3: six-way tie, stable order puts class 3 at rank 3 -> top5 only
    ])
    out = classification_accuracy(images, [0, 2, 5, 3], classifier, ks=(1, 3, 5))
    assert out == pytest.approx({"top1": 25.0, "top3": 50.0, "top5": 75.0})
    assert list(classification_accuracy(images, [0, 2, 5, 3], classifier)) == ["top1", "top5"]


def test_top5_with_fewer_than_five_classes_counts_every_image():
    classifier = torch.eye(3)
    images = torch.tensor([[1.0, 0, 0], [1.0, 0, 0]])  # labels 0 (right) and 2 (last of three)
    assert classification_accuracy(images, [0, 2], classifier) == pytest.approx({"top1": 50.0, "top5": 100.0})


def test_classification_rejects_bad_labels():
    with pytest.raises(CLIPMoEError, match="labels"):
        classification_accuracy(torch.eye(3), [0, 1], torch.eye(3))
    with pytest.raises(CLIPMoEError, match="0..2"):
        classification_accuracy(torch.eye(3), [0, 1, 3], torch.eye(3))


class LookupEncoder(ZeroShotEncoder):
    """Texts map to fixed vectors; an image maps to its top-left pixel's colour. Goes through the
    base class, so batching, lazy image loading and normalisation are the real ones."""

    def __init__(self, table):
        super().__init__(torch.nn.Linear(1, 1))
        self.table, self.seen = table, []

    def _text_features(self, texts):
        self.seen += texts
        return torch.tensor([self.table[t] for t in texts])

    def _image_features(self, images):
        assert all(isinstance(im, Image.Image) and im.mode == "RGB" for im in images)
        return torch.tensor([[float(c) for c in im.getpixel((0, 0))] for im in images])


def test_zero_shot_classifier_is_normalised_mean_of_prompts():
    table = {"a cat.": [1.0, 0.0], "the cat.": [0.0, 2.0], "a dog.": [1.0, 0.0], "the dog.": [0.6, -0.8]}
    encoder = LookupEncoder(table)
    classifier = zero_shot_classifier(encoder, ["cat", "dog"], ["a {}.", "the {}."], batch_size=3)
    # cat: mean((1, 0), (0, 1)) = (0.5, 0.5) -> (1, 1)/sqrt 2; dog: mean((1, 0), (0.6, -0.8)) = (0.8, -0.4) -> (2, -1)/sqrt 5
    expected = torch.tensor([[1 / math.sqrt(2), 1 / math.sqrt(2)], [2 / math.sqrt(5), -1 / math.sqrt(5)]])
    assert torch.allclose(classifier, expected, atol=1e-6)
    assert encoder.seen == ["a cat.", "the cat.", "a dog.", "the dog."]


def test_prompt_classifier_takes_each_class_its_own_prompts():
    table = {"one cat.": [1.0, 0.0], "two cats.": [0.0, 2.0], "a cat alone.": [0.0, 1.0], "a dog.": [0.6, -0.8]}
    encoder = LookupEncoder(table)
    classifier = metrics.prompt_classifier(encoder, [["one cat.", "two cats.", "a cat alone."], ["a dog."]])
    # cat: mean((1, 0), (0, 1), (0, 1)) = (1/3, 2/3) -> (1, 2)/sqrt 5; dog: (0.6, -0.8) already unit
    expected = torch.tensor([[1 / math.sqrt(5), 2 / math.sqrt(5)], [0.6, -0.8]])
    assert torch.allclose(classifier, expected, atol=1e-6)
    with pytest.raises(CLIPMoEError, match="at least one prompt"):
        metrics.prompt_classifier(encoder, [["a dog."], []])


def test_evaluate_retrieval_and_classification_on_image_files(tmp_path):
    from .conftest import write_image

    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    paths = [str(write_image(tmp_path / f"{i}.png", c)) for i, c in enumerate(colors)]
    table = {"red": [1.0, 0, 0], "green": [0, 1.0, 0], "blue": [0, 0, 1.0], "reddish": [0.9, 0.1, 0], "blueish": [0.5, 0, 0.6]}
    encoder = LookupEncoder(table)
    # red: "red" rank 0; green: "green" rank 0; blue: its captions "blue" rank 0, "blueish" rank 1
    # t2i: "red"->red rank 0, "reddish" -> red 0.9 vs green 0.1: rank 0, "green" rank 0, "blue" rank 0,
    # "blueish" -> blue 0.6 beats red 0.5: rank 0  => everything 100
    out = evaluate_retrieval(encoder, paths, [["red", "reddish"], ["green"], ["blueish", "blue"]], batch_size=2)
    assert out["i2t_r1"] == 100.0 and out["t2i_r1"] == 100.0
    assert out["num_images"] == 3 and out["num_texts"] == 5
    # "blueish" described the red image instead: red's row is [1, 0.9, 0, 0, 0.5] -> still rank 0 for i2t;
    # t2i for "blueish" (now owned by red): red 0.5 < blue 0.6 -> rank 1, so t2i R@1 = 4/5
    out = evaluate_retrieval(encoder, paths, [["red", "reddish", "blueish"], ["green"], ["blue"]], batch_size=1)
    assert out["t2i_r1"] == pytest.approx(80.0) and out["t2i_r5"] == 100.0

    table.update({"a photo of a red.": [1.0, 0, 0], "a photo of a green.": [0, 1.0, 0], "a photo of a blue.": [0.0, 0.8, 0.6]})
    # scores over (red, green, blue) classes: red image (1, 0, 0) -> right; green image (0, 1, 0.8) -> "green",
    # but it is labelled "blue" here (rank 1): wrong; blue image (0, 0, 0.6) -> right. top1 = 2/3, top5 = 100 (3 classes)
    res = evaluate_classification(encoder, paths, [0, 2, 2], ["red", "green", "blue"], templates="simple", batch_size=2)
    assert res == pytest.approx({"top1": 200 / 3, "top5": 100.0, "num_images": 3, "num_classes": 3, "num_templates": 1})


def test_evaluate_rejects_mismatched_lengths():
    encoder = LookupEncoder({})
    with pytest.raises(CLIPMoEError, match="caption lists"):
        evaluate_retrieval(encoder, [Image.new("RGB", (4, 4))], [["a"], ["b"]])
    with pytest.raises(CLIPMoEError, match="labels"):
        evaluate_classification(encoder, [Image.new("RGB", (4, 4))], [0, 1], ["a", "b"])


def test_encoder_output_is_unit_length():
    encoder = LookupEncoder({"x": [3.0, 4.0]})
    assert torch.allclose(encoder.encode_texts(["x"]), torch.tensor([[0.6, 0.8]]))
    assert encoder.encode_images([Image.new("RGB", (2, 2), (3, 0, 4))]).allclose(torch.tensor([[0.6, 0, 0.8]]))
