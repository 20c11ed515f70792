"""Bad input to `clipmoe dmu ...`: one line naming the file, flag or field (exit 2, no traceback), found
before features or training, nothing left behind that blocks the corrected rerun, a user's files
untouched; and a run folder that resumes only on the same content (settings, base, data)."""

import json
import os
import shutil

import pytest

from clipmoe_encoder.cli import main
from tests.one_line_errors import assert_refused_in_one_line, hash_tree

from .helpers import make_base, make_dataset

SMALL = ["--batch-size", "4", "--warmup-steps", "0", "--small-clusters", "merge", "--num-experts", "2",
         "--clusters-per-modality", "2", "--routing-stats-samples", "4"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("dmu_bad")
    r = lambda *p: str(root.joinpath(*p))
    make_base(r("base"))
    make_dataset(r("data"), n=12)
    with open(r("data", "one_object.json"), "w") as f:  # the case: read as one JSONL record before
        json.dump({"image": "images/000.png", "caption": "a red square"}, f)
    with open(r("data", "latin1.jsonl"), "wb") as f:
        f.write(b'{"image": "images/000.png", "caption": "red"}\n{"image": "images/001.png", "caption": "caf\xe9"}\n')
    with open(r("data", "three.jsonl"), "w") as f:
        f.writelines(json.dumps({"image": f"images/{i:03d}.png", "caption": "a shape"}) + "\n" for i in range(3))
    with open(r("data", "missing_image.jsonl"), "w") as f:
        f.write(json.dumps({"image": "images/nope.png", "caption": "a shape"}) + "\n")
    with open(r("data", "broken.json"), "w") as f:
        f.write('[{"image": "images/000.png", "caption": "a"},')
    with open(r("data", "notes.txt"), "w") as f:
        f.write("not data")
    shutil.copytree(r("base"), r("base_not_json"))
    with open(r("base_not_json", "config.json"), "w") as f:
        f.write("{not json")
    from clipmoe_encoder import upcycle

    upcycle(r("base"), num_experts=2, top_k=1).save_pretrained(r("moe_base"))
    os.makedirs(r("users_folder"))
    with open(r("users_folder", "thesis.tex"), "w") as f:
        f.write("\\chapter{Results}")
    for stage in ("train", "direct-ft"):  # `dmu train` writes <out>/train, a baseline <out>/<kind>
        os.makedirs(r("users_train", stage))
        with open(r("users_train", stage, "notes.md"), "w") as f:
            f.write("mine")
    with open(r("stats.json"), "w") as f:
        f.write('{"mine": true}')
    with open(r("a_file.txt"), "w") as f:
        f.write("notes")
    return root


def _run(*extra, data="{root}/data/data.json", out="{root}/out"):
    return ["dmu", "run", "--base", "{root}/base", "--data", data, "--out", out, *SMALL, *extra]


# (case id, argv with {root}, texts the one line must contain, a user's path whose bytes must not change)
CASES = [
    ("data-one-json-object", _run(data="{root}/data/one_object.json"), ["one_object.json", "one JSON dict", ".jsonl"], None),
    ("data-not-utf8", _run(data="{root}/data/latin1.jsonl"), ["latin1.jsonl", "line 2", "UTF-8"], None),
    ("data-truncated-json", _run(data="{root}/data/broken.json"), ["broken.json", "not valid JSON"], None),
    ("data-unknown-format", _run(data="{root}/data/notes.txt"), ["notes.txt", "data format"], None),
    ("data-missing", _run(data="{root}/data/nope.json"), ["nope.json", "no such file"], None),
    ("data-directory-as-jsonl", _run("--data-format", "jsonl", data="{root}/data"), ["data", "is a directory", "jsonl"], None),
    ("data-missing-image", _run(data="{root}/data/missing_image.jsonl"), ["missing_image.jsonl: line 1", "nope.png", "--skip-bad"], None),
    ("data-fewer-pairs-than-a-batch", _run(data="{root}/data/three.jsonl"), ["three.jsonl", "3 usable", "--batch-size 4"], None),
    ("data-format-unknown", _run("--data-format", "xml"), ["--data-format 'xml'", "jsonl"], None),
    ("image-root-a-file", _run("--image-root", "{root}/a_file.txt"), ["a_file.txt", "not a directory"], None),
    ("base-missing", ["dmu", "run", "--base", "{root}/nobase", "--data", "{root}/data/data.json", "--out", "{root}/out", *SMALL], ["nobase"], None),
    ("base-config-not-json", ["dmu", "run", "--base", "{root}/base_not_json", "--data", "{root}/data/data.json", "--out", "{root}/out", *SMALL],
     ["base_not_json/config.json", "not valid JSON"], None),
    ("base-is-moe", ["dmu", "run", "--base", "{root}/moe_base", "--data", "{root}/data/data.json", "--out", "{root}/out", *SMALL],
     ["--base", "moe_base", "'clipmoe'"], None),
    ("out-is-a-file", _run(out="{root}/a_file.txt"), ["--out", "a_file.txt", "is a file"], "{root}/a_file.txt"),
    ("out-not-writable", _run(out="/sys/clipmoe-run"), ["--out", "/sys/clipmoe-run", "cannot write"], None),
    ("out-users-folder", _run(out="{root}/users_folder"), ["--out", "users_folder", "--overwrite"], "{root}/users_folder"),
    ("baseline-out-users-folder", ["dmu", "baseline", "--kind", "direct-ft", "--base", "{root}/base", "--data", "{root}/data/data.json",
                                   "--out", "{root}/users_train", *SMALL], ["users_train/direct-ft", "--overwrite"], "{root}/users_train"),
    ("batch-size-one", _run("--batch-size", "1"), ["--batch-size 1", "at least 2"], None),
    ("batch-size-text", _run("--batch-size", "four"), ["--batch-size", "four"], None),
    ("top-k-above-experts", _run("--top-k", "3"), ["--top-k 3", "--num-experts 2"], None),
    ("num-experts-one", _run("--num-experts", "1"), ["--num-experts 1", "at least 2"], None),
    ("negative-lr", _run("--lr-mcl=-1e-5"), ["--lr-mcl", "positive"], None),
    ("mixed-precision-fp8", _run("--mixed-precision", "fp8"), ["--mixed-precision", "'fp8'", "bf16"], None),
    ("label-smoothing-one", _run("--label-smoothing", "1"), ["--label-smoothing", "[0, 1)"], None),
    ("abbreviated-flag", _run("--lr", "1e-3"), ["--lr"], None),
    ("table-eval-data-missing", ["dmu", "table", "--base", "{root}/base", "--data", "{root}/data/data.json", "--out", "{root}/out",
                                 "--eval-data", "{root}/data/none.json", *SMALL], ["none.json", "no such file"], None),
    ("table-out-users-folder", ["dmu", "table", "--base", "{root}/base", "--data", "{root}/data/data.json", "--out", "{root}/users_folder",
                                "--eval-data", "{root}/data/data.json", *SMALL], ["users_folder", "--overwrite"], "{root}/users_folder"),
    ("train-out-users-folder", ["dmu", "train", "--model", "{root}/base", "--data", "{root}/data/data.json", "--out", "{root}/users_train"],
     ["users_train/train", "--overwrite"], "{root}/users_train"),
    ("train-data-not-utf8", ["dmu", "train", "--model", "{root}/base", "--data", "{root}/data/latin1.jsonl", "--out", "{root}/out"],
     ["latin1.jsonl", "line 2"], None),
    ("routing-json-exists", ["dmu", "routing", "--model", "{root}/moe_base", "--data", "{root}/data/data.json", "--json", "{root}/stats.json"],
     ["--json", "stats.json", "--overwrite"], "{root}/stats.json"),
    ("routing-json-directory", ["dmu", "routing", "--model", "{root}/moe_base", "--data", "{root}/data/data.json", "--json", "{root}/users_folder"],
     ["--json", "users_folder", "is a directory"], "{root}/users_folder"),
    ("routing-max-samples-zero", ["dmu", "routing", "--model", "{root}/moe_base", "--data", "{root}/data/data.json", "--max-samples", "0"],
     ["--max-samples"], None),
    ("prepare-base-out-users-folder", ["dmu", "prepare-base", "--model", "{root}/base", "--out", "{root}/users_folder"],
     ["--out", "users_folder", "--overwrite"], "{root}/users_folder"),
]


@pytest.mark.parametrize("argv, needles, keep", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(files, capsys, argv, needles, keep):
    assert_refused_in_one_line(main, argv, needles, keep, files, capsys)
    # refused before anything was written: nothing there blocks the corrected rerun
    assert not os.path.exists(os.path.join(files, "out"))
    assert not [n for n in os.listdir(files) if ".clipmoe-" in n]


@pytest.mark.slow
def test_failed_run_blocks_nothing_and_restart_discards_the_old_run(files, tmp_path, capsys):
    """The issue's sequence: a .json holding one object fails at the data check (before features),
    the fixed file runs in the same folder; an in-place edit is refused until --restart. The user's
    own file in the folder (taken with --overwrite) survives all of it."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    data = os.path.join(files, "data", "fixed_later.json")
    with open(data, "w") as f:
        json.dump({"image": "images/000.png", "caption": "a red square"}, f)
    argv = ["dmu", "run", "--base", os.path.join(files, "base"), "--data", data, "--out", str(out), *SMALL]
    assert main(argv) == 2  # a folder that holds no run
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 2
    assert "one JSON dict" in capsys.readouterr().err
    assert os.listdir(out) == ["thesis.tex"]

    shutil.copy(os.path.join(files, "data", "data.json"), data)
    assert main([*argv, "--overwrite"]) == 0
    assert os.path.isfile(out / "final" / "model.safetensors") and (out / "thesis.tex").read_text() == "mine"
    features = hash_tree(str(out / "features"))
    assert main(argv) == 0  # now its own run folder: resumes without --overwrite

    with open(data) as f:
        records = json.load(f)
    records[0]["conversations"][1]["value"] = "a blue dot"
    with open(data, "w") as f:
        json.dump(records, f)
    capsys.readouterr()
    assert main(argv) == 2
    assert "training data changed" in capsys.readouterr().err
    assert main([*argv, "--restart"]) == 0
    assert hash_tree(str(out / "features")) != features  # recomputed on the new captions
    assert (out / "thesis.tex").read_text() == "mine"
    with open(out / "settings.json") as f:
        assert json.load(f)["data_fingerprint"]["records"] == 12


@pytest.mark.slow
def test_train_resumes_only_on_the_same_flags_model_and_data(files, tmp_path, capsys):
    data = os.path.join(files, "data", "train_edit.json")
    shutil.copy(os.path.join(files, "data", "data.json"), data)
    argv = ["dmu", "train", "--model", os.path.join(files, "base"), "--data", data, "--out", str(tmp_path), "--batch-size", "4"]
    assert main(argv) == 0
    log = (tmp_path / "train" / "log.jsonl").read_text()
    assert main([*argv, "--save-every", "7"]) == 0  # a result-neutral flag: resumes, nothing retrained
    assert (tmp_path / "train" / "log.jsonl").read_text() == log
    capsys.readouterr()
    assert main([*argv, "--lr", "1e-3"]) == 2
    assert "field 'lr'" in capsys.readouterr().err
    with open(data) as f:
        records = json.load(f)
    records[5]["conversations"][1]["value"] = "a green stripe"
    with open(data, "w") as f:
        json.dump(records, f)
    before = hash_tree(str(tmp_path / "train"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "training data changed" in err and "--restart" in err and hash_tree(str(tmp_path / "train")) == before
    assert main([*argv, "--restart"]) == 0
    assert (tmp_path / "train" / "log.jsonl").read_text() != log
