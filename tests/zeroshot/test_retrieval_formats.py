"""`clipmoe eval retrieval --dataset json` reads every format DMU trains on (through DMU's reader), and
`clipmoe dmu split` holds out N records reproducibly for it."""

import json
import os

import pytest

from clipmoe_encoder.cli import main
from clipmoe_encoder.dmu.data import Record
from clipmoe_encoder.dmu.split import held_out_indices, split_records
from clipmoe_encoder.zeroshot import evaluate_retrieval, load_encoder

from .conftest import random_image

CAPTIONS = ["a cat.", "a red car.", "two dogs.", "a boat!", "blue sky.", "a tree, green."]


@pytest.fixture
def images(tmp_path):
    (tmp_path / "data" / "imgs").mkdir(parents=True)
    for i in range(len(CAPTIONS)):
        random_image(i, size=(40, 30)).save(tmp_path / "data" / "imgs" / f"{i}.jpg", format="JPEG")
    return tmp_path / "data"


def _write_formats(root):
    """The same six pairs as ShareGPT4V JSON, LLaVA JSON, a JSON list, JSONL and an img2dataset folder."""
    pairs = [(f"imgs/{i}.jpg", c) for i, c in enumerate(CAPTIONS)]
    files = {
        "sharegpt4v.json": json.dumps([{"id": i, "image": im, "conversations": [
            {"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": c}]} for i, (im, c) in enumerate(pairs)]),
        "llava.json": json.dumps([{"id": i, "image": im, "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": c}, {"from": "human", "value": "more"}]}
            for i, (im, c) in enumerate(pairs)]),
        "list.json": json.dumps([{"image": im, "caption": c} for im, c in pairs]),
        "pairs.jsonl": "".join(json.dumps({"image": im, "caption": c}) + "\n" for im, c in pairs),
    }
    for name, text in files.items():
        (root / name).write_text(text)
    for i, c in enumerate(CAPTIONS):
        (root / "imgs" / f"{i}.txt").write_text(c)
    return [root / name for name in files] + [root / "imgs"]


def _retrieval(model, annotations, *extra):
    return ["eval", "retrieval", "--model", str(model), "--dataset", "json", "--annotations", str(annotations),
            "--device", "cpu", "--no-progress", "--json", *extra]


def test_every_dmu_format_gives_the_same_retrieval(hf_clip, images, capsys):
    expected = None
    for data in _write_formats(images):
        assert main(_retrieval(hf_clip[0], data)) == 0, data
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["num_images"] == 6 and result["num_texts"] == 6, data
        metrics = {k: v for k, v in result.items() if k.startswith(("i2t", "t2i"))}
        expected = expected or metrics
        assert metrics == expected, data
    encoder = load_encoder(str(hf_clip[0]))  # and the numbers are those of the API on the pairs
    paths = [os.path.join(images, "imgs", f"{i}.jpg") for i in range(6)]
    api = evaluate_retrieval(encoder, paths, [[c] for c in CAPTIONS])
    assert expected == {k: pytest.approx(v) for k, v in api.items() if k in expected}


def test_missing_image_is_one_line_or_skipped(hf_clip, images, capsys):
    path = images / "list.json"
    path.write_text(json.dumps([{"image": "imgs/0.jpg", "caption": "a cat."}, {"image": "imgs/1.jpg", "caption": "a car."},
                                {"image": "imgs/none.jpg", "caption": "gone"}]))
    assert main(_retrieval(hf_clip[0], path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "list.json: record 2: image file" in err and "none.jpg" in err
    assert main(_retrieval(hf_clip[0], path, "--skip-bad")) == 0
    captured = capsys.readouterr()
    assert "1 of 3 records left out" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["num_images"] == 2


def test_held_out_indices_are_fixed_by_seed():
    # sha256("<seed>:<index>") ranks the records: hand-checkable, and the same on every platform
    import hashlib

    ranked = sorted(range(10), key=lambda i: hashlib.sha256(f"7:{i}".encode()).digest())
    assert held_out_indices(10, 3, 7) == set(ranked[:3])
    assert held_out_indices(10, 3, 7) != held_out_indices(10, 3, 8)
    records = [Record(f"/x/{i}.jpg", str(i)) for i in range(10)]
    train, held = split_records(records, 3, 7)
    assert [int(r.caption) for r in held] == sorted(ranked[:3])  # in the data's order
    assert sorted(train + held, key=lambda r: int(r.caption)) == records
    with pytest.raises(Exception, match="--holdout 10: the data has only 10 records"):
        held_out_indices(10, 10, 0)


def test_dmu_split_then_evaluate_the_held_out_part(hf_clip, images, tmp_path, capsys):
    data = _write_formats(images)[0]  # ShareGPT4V
    out = tmp_path / "split"
    args = ["dmu", "split", str(data), "--holdout", "2", "--seed", "0", "--out-train", str(out / "train.jsonl"),
            "--out-heldout", str(out / "heldout.jsonl")]
    assert main(args) == 0
    assert "held out 2 of 6 records" in capsys.readouterr().out
    held = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    chosen = sorted(held_out_indices(6, 2, 0))
    assert [h["caption"] for h in held] == [CAPTIONS[i] for i in chosen]
    assert [t["caption"] for t in train] == [c for i, c in enumerate(CAPTIONS) if i not in chosen]
    assert all(os.path.isabs(r["image"]) and os.path.isfile(r["image"]) for r in held + train)
    # the held-out file is what retrieval reads; its images resolve from anywhere (absolute paths)
    assert main(_retrieval(hf_clip[0], out / "heldout.jsonl")) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_images"] == 2
    # a second run refuses to replace either file, before reading the data, and leaves them as they were
    before = (out / "heldout.jsonl").read_bytes()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--out-train" in err and "file exists" in err
    assert (out / "heldout.jsonl").read_bytes() == before


@pytest.mark.parametrize("flags, words", [
    (["--holdout", "0"], ["--holdout"]),
    (["--holdout", "6"], ["--holdout 6", "only 6 records"]),
    (["--holdout", "1", "--same"], ["same file"]),
])
def test_dmu_split_bad_input(images, tmp_path, capsys, flags, words):
    data = _write_formats(images)[2]
    heldout = tmp_path / "h.jsonl"
    train = heldout if "--same" in flags else tmp_path / "t.jsonl"
    flags = [f for f in flags if f != "--same"]
    assert main(["dmu", "split", str(data), *flags, "--out-train", str(train), "--out-heldout", str(heldout)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert all(w in err for w in words), err
    assert not heldout.exists() and not (tmp_path / "t.jsonl").exists()
