"""MMVP-VLM: the published folder layout, pair scoring by hand, and `clipmoe eval mmvp` end to end."""

import csv
import json

import pytest
import torch

import clipmoe_encoder
from clipmoe_encoder import CLIPMoEError
from clipmoe_encoder.cli import main
from clipmoe_encoder.zeroshot.mmvp import mmvp_pair_hits, mmvp_scores, read_mmvp

from .conftest import random_image

PATTERNS = ("Orientation and Direction", "Color and Appearance", "Texts")
# short: the tiny tokenizer has one token per character and 24 positions, with "a photo of " in front
WORDS = ["dog left", "dog right", "red car", "blue car", "stop", "go"]


def write_mmvp(root, pairs_per_pattern=2, patterns=PATTERNS):
    """A small MMVP_VLM folder: Questions.csv plus 'MLLM_VLM Images/<Type>/<id>.jpg', ids 1.. in pair order."""
    rows, qid = [], 0
    for p, pattern in enumerate(patterns):
        for k in range(pairs_per_pattern):
            for side in range(2):
                qid += 1
                folder = root / "MLLM_VLM Images" / pattern
                folder.mkdir(parents=True, exist_ok=True)
                random_image(100 * p + 10 * k + side, size=(40, 36)).save(folder / f"{qid}.jpg", format="JPEG")
                rows.append([qid, pattern, f"{WORDS[(2 * p + side) % 6]} {k}"])
    with open(root / "Questions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Question ID", "Type", "Statement"])
        writer.writerows(rows)
    return root


def test_pair_hits_and_scores_by_hand():
    e = torch.eye(4)
    # pair 0 (Color): each statement equals its image -> counts
    # pair 1 (Color): statement 0 is closer to image 1 (0.9 > 0.1) -> does not count
    # pair 2 (Texts): statement 1 ties between the two images (0.5 = 0.5) -> does not count
    # pair 3 (Texts): statement 0 only slightly closer to image 0 (0.6 > 0.4), statement 1 to image 1 -> counts
    images = torch.stack([e[0], e[1], e[0], e[1], e[0], e[1], e[0], e[1]])
    texts = torch.stack([e[0], e[1],
                         0.1 * e[0] + 0.9 * e[1], e[1],
                         e[0], 0.5 * e[0] + 0.5 * e[1],
                         0.6 * e[0] + 0.4 * e[1], e[1] + 0.2 * e[2]])
    hits = mmvp_pair_hits(images, texts)
    assert hits.tolist() == [True, False, False, True]
    scores = mmvp_scores(["Color", "Color", "Texts", "Texts"], hits)
    assert scores["patterns"] == {"Color": 50.0, "Texts": 50.0}
    assert scores["average"] == 50.0 and scores["overall"] == 50.0 and scores["num_pairs"] == 4
    # average is over patterns, overall over pairs: they differ when patterns have different sizes
    scores = mmvp_scores(["A", "B", "B", "B"], torch.tensor([True, True, False, False]))
    assert scores["patterns"] == {"A": 100.0, "B": pytest.approx(100 / 3)}
    assert scores["average"] == pytest.approx((100 + 100 / 3) / 2) and scores["overall"] == 50.0
    with pytest.raises(CLIPMoEError, match="same"):
        mmvp_pair_hits(images[:3], texts[:3])


def test_read_mmvp_published_layout(tmp_path):
    write_mmvp(tmp_path)
    pairs = read_mmvp(tmp_path)
    assert len(pairs) == 6 and [p.pattern for p in pairs] == [p for p in PATTERNS for _ in range(2)]
    assert pairs[1].question_ids == (3, 4)
    assert pairs[1].images == (str(tmp_path / "MLLM_VLM Images" / PATTERNS[0] / "3.jpg"),
                               str(tmp_path / "MLLM_VLM Images" / PATTERNS[0] / "4.jpg"))
    assert pairs[2].statements == ("red car 0", "blue car 0")


@pytest.mark.parametrize("edit, message", [
    (lambda root: (root / "Questions.csv").unlink(), "Questions.csv: missing"),
    (lambda root: _rewrite(root, lambda rows: [["ID", "Type", "Statement"]] + rows[1:]), r"lacks column\(s\) 'Question ID'"),
    (lambda root: _rewrite(root, lambda rows: rows[:-1]), "11 questions, an odd number"),
    (lambda root: _rewrite(root, lambda rows: rows[:2] + [[rows[2][0], "Texts", rows[2][2]]] + rows[3:]),
     r"line 3: field 'Type' is 'Texts' but its pair partner \(line 2\) has 'Orientation and Direction'"),
    (lambda root: _rewrite(root, lambda rows: rows[:1] + [["one", rows[1][1], rows[1][2]]] + rows[2:]),
     "line 2: field 'Question ID' is 'one'"),
    (lambda root: _rewrite(root, lambda rows: rows[:1] + [[rows[1][0], rows[1][1], " "]] + rows[2:]), "line 2: field 'Statement' is empty"),
    (lambda root: _rewrite(root, lambda rows: rows[:2] + [["1", rows[1][1], "x"]] + rows[3:]), "line 3: field 'Question ID' 1 appears twice"),
    (lambda root: (root / "MLLM_VLM Images" / "Texts" / "10.jpg").unlink(), "line 11: image .*10.jpg does not exist"),
    (lambda root: (root / "Questions.csv").write_bytes(b"Question ID,Type,Statement\n1,Texts,caf\xe9\n"), "not UTF-8"),
])
def test_read_mmvp_bad_input(tmp_path, edit, message):
    write_mmvp(tmp_path)
    edit(tmp_path)
    with pytest.raises(CLIPMoEError, match=message):
        read_mmvp(tmp_path)


def _rewrite(root, change):
    with open(root / "Questions.csv", newline="") as f:
        rows = list(csv.reader(f))
    with open(root / "Questions.csv", "w", newline="") as f:
        csv.writer(f).writerows(change(rows))


def _reference_sims(model, tokenizer, processor, image_files, statements, prefix="a photo of "):
    """Independent of the zero-shot encoders: CLIPModel's own forward (logits_per_text[t, i] is
    statement t against image i, a positive multiple of their cosine similarity)."""
    from PIL import Image

    with torch.no_grad():
        pixels = processor(images=[Image.open(p).convert("RGB") for p in image_files], return_tensors="pt")["pixel_values"]
        tokens = tokenizer([prefix + s for s in statements], padding=True, return_tensors="pt")
        return model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels).logits_per_text


# pairs that count (True) and pairs that do not, per pattern: 3/4, 1/4 and 2/4 -> 75, 25, 50 percent
DESIGN = {PATTERNS[0]: [True, True, True, False], PATTERNS[1]: [False, True, False, False], PATTERNS[2]: [True, False, False, True]}


@pytest.fixture(scope="module")
def designed_mmvp(hf_clip, tmp_path_factory):
    """An MMVP folder whose pair outcomes under the tiny CLIP are chosen in advance: from a pool of
    images and statements scored by CLIPModel's forward, take (image a, image b, statement s,
    statement t) combinations that count (s prefers a and t prefers b, by a clear margin) or
    clearly do not, as DESIGN asks."""
    _, model, tokenizer, processor = hf_clip
    pool_dir = tmp_path_factory.mktemp("pool")
    pool = []
    for seed in range(10):
        random_image(seed, size=(40, 36)).save(pool_dir / f"{seed}.jpg", format="JPEG")
        pool.append(pool_dir / f"{seed}.jpg")
    words = WORDS + ["zz", "1234567", "?!?!", "cat 9"]
    sims = _reference_sims(model, tokenizer, processor, pool, words)
    margin = 0.05
    counts, misses = [], []
    for a in range(len(pool)):
        for b in range(len(pool)):
            for s_ in range(len(words)):
                for t in range(len(words)):
                    if a == b or s_ == t:
                        continue
                    first, second = sims[s_, a] - sims[s_, b], sims[t, b] - sims[t, a]
                    if first > margin and second > margin:
                        counts.append((a, b, s_, t))
                    elif min(first, second) < -margin:
                        misses.append((a, b, s_, t))
    assert len(counts) >= 6 and len(misses) >= 6, "the tiny CLIP offers too few clear pairs"
    root = tmp_path_factory.mktemp("mmvp")
    rows, qid = [], 0
    for pattern, outcomes in DESIGN.items():
        (root / "MLLM_VLM Images" / pattern).mkdir(parents=True)
        for hit in outcomes:
            a, b, s_, t = (counts if hit else misses).pop(0 if hit else len(misses) // 2)
            for image, word in ((a, s_), (b, t)):
                qid += 1
                (root / "MLLM_VLM Images" / pattern / f"{qid}.jpg").write_bytes(pool[image].read_bytes())
                rows.append([qid, pattern, words[word]])
    with open(root / "Questions.csv", "w", newline="") as f:
        csv.writer(f).writerows([["Question ID", "Type", "Statement"]] + rows)
    return root


def test_eval_mmvp_hf_clip_designed_outcomes(hf_clip, designed_mmvp, capsys):
    directory = hf_clip[0]
    assert main(["eval", "mmvp", "--model", str(directory), "--data", str(designed_mmvp), "--batch-size", "3",
                 "--device", "cpu", "--json", "--no-progress"]) == 0
    result = _last_json(capsys.readouterr().out)
    assert result["task"] == "mmvp" and result["num_pairs"] == 12 and result["num_patterns"] == 3
    assert result["patterns"] == {PATTERNS[0]: 75.0, PATTERNS[1]: 25.0, PATTERNS[2]: 50.0}
    assert result["average"] == 50.0 and result["overall"] == 50.0


def test_eval_mmvp_swapped_statements(hf_clip, designed_mmvp, tmp_path, capsys):
    """Swapping the two statements of every pair: a pair that counted cannot count any more."""
    import shutil

    data = shutil.copytree(designed_mmvp, tmp_path / "swapped")
    _rewrite(data, lambda rows: rows[:1] + [rows[i][:2] + [rows[i + 1 if i % 2 else i - 1][2]] for i in range(1, len(rows))])
    assert read_mmvp(data)[0].statements == tuple(reversed(read_mmvp(designed_mmvp)[0].statements))
    assert main(["eval", "mmvp", "--model", str(hf_clip[0]), "--data", str(data), "--json", "--no-progress"]) == 0
    result = _last_json(capsys.readouterr().out)
    # each designed hit turns into a miss; whichever designed misses flip are the reference's call
    pairs = read_mmvp(data)
    sims = [_reference_sims(hf_clip[1], hf_clip[2], hf_clip[3], p.images, p.statements) for p in pairs]
    hits = [bool(s[0, 0] > s[0, 1] and s[1, 1] > s[1, 0]) for s in sims]
    designed = [h for outcomes in DESIGN.values() for h in outcomes]
    assert not any(a and b for a, b in zip(hits, designed))
    assert result["overall"] == pytest.approx(100.0 * sum(hits) / 12)


def test_eval_mmvp_clipmoe_and_text_report(hf_clip, designed_mmvp, tmp_path, capsys):
    """A CLIP-MoE upcycled from the dense CLIP (top-1 of identical experts) scores exactly like it."""
    _, model, tokenizer, processor = hf_clip
    moe_dir = tmp_path / "moe"
    moe = clipmoe_encoder.upcycle(model, num_experts=2, top_k=1)
    moe.save_pretrained(moe_dir)
    tokenizer.save_pretrained(moe_dir)
    processor.save_pretrained(moe_dir)
    assert main(["eval", "mmvp", "--model", str(moe_dir), "--data", str(designed_mmvp), "--json", "--no-progress"]) == 0
    assert _last_json(capsys.readouterr().out)["patterns"] == {PATTERNS[0]: 75.0, PATTERNS[1]: 25.0, PATTERNS[2]: 50.0}
    assert main(["eval", "mmvp", "--model", str(moe_dir), "--data", str(designed_mmvp), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "mmvp on mmvp-vlm" in out and "Color and Appearance: 25.00" in out and "average: 50.00" in out
    data = tmp_path / "empty"
    data.mkdir()
    assert main(["eval", "mmvp", "--model", str(moe_dir), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("clipmoe eval mmvp: error:") and "Questions.csv: missing" in err


def _expected(pairs, hits):
    per = {}
    for pair, hit in zip(pairs, hits):
        per.setdefault(pair.pattern, []).append(hit)
    return {p: 100.0 * sum(h) / len(h) for p, h in per.items()}


def _last_json(out):
    return json.loads(out.strip().splitlines()[-1])


def test_eval_mmvp_open_clip(tiny_open_clip, tmp_path, capsys):
    import open_clip
    from PIL import Image

    name, checkpoint, _ = tiny_open_clip
    write_mmvp(tmp_path, pairs_per_pattern=2)
    assert main(["eval", "mmvp", "--model", f"open_clip:{name}:{checkpoint}", "--data", str(tmp_path), "--prefix", "",
                 "--json", "--no-progress"]) == 0
    result = _last_json(capsys.readouterr().out)
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(checkpoint))
    tokenizer = open_clip.get_tokenizer(name)
    pairs, hits = read_mmvp(tmp_path), []
    with torch.no_grad():
        for pair in pairs:
            image = model.encode_image(torch.stack([preprocess(Image.open(p).convert("RGB")) for p in pair.images]), normalize=True)
            text = model.encode_text(tokenizer(list(pair.statements)), normalize=True)
            sims = text @ image.T
            hits.append(bool(sims[0, 0] > sims[0, 1] and sims[1, 1] > sims[1, 0]))
    assert result["patterns"] == pytest.approx(_expected(pairs, hits))
