"""Bad input to `clipmoe upcycle / convert-official / info / eval`: one line naming the file, flag or
field (exit 2, no traceback), found before the weights are read, and a user's files left as they were."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import clipmoe_encoder as cm
from clipmoe_encoder.cli import main
from tests.encoder.conftest import tiny_clip, tiny_vision
from tests.one_line_errors import assert_refused_in_one_line, hash_tree


def _edit_config(src, dst, edit):
    shutil.copytree(src, dst)
    with open(os.path.join(dst, "config.json")) as f:
        config = json.load(f)
    edit(config)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f)
    return dst


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Real checkpoints and the broken variants a user could hand the commands."""
    root = tmp_path_factory.mktemp("bad")
    r = lambda *p: str(root.joinpath(*p))
    tiny_clip().save_pretrained(r("dense"))
    with open(r("dense", "tokenizer_config.json"), "w") as f:  # a processor file, copied next to the output
        json.dump({"model_max_length": 16}, f)
    tiny_vision().save_pretrained(r("vision"))
    cm.upcycle(r("dense"), num_experts=4, top_k=2).save_pretrained(r("moe"))
    cm.upcycle(r("dense"), num_experts=2, top_k=1).save_pretrained(r("moe_2_experts"))
    # a dense directory whose weights are garbage: a check that runs first names the flag, not the weights
    shutil.copytree(r("dense"), r("dense_bad_weights"))
    with open(r("dense_bad_weights", "model.safetensors"), "wb") as f:
        f.write(b"\x00" * 64)

    def eight(c):
        c["vision_config"]["num_experts"] = c["text_config"]["num_experts"] = 8

    def no_experts(c):
        del c["vision_config"]["num_experts"]

    def fewer_layers(c):
        c["vision_config"]["moe_layers"] = [0, 1]

    _edit_config(r("moe"), r("moe_8_in_config"), eight)
    # a missing field takes the class default (4 experts), as in transformers: wrong for these 2-expert weights
    _edit_config(r("moe_2_experts"), r("moe_no_num_experts"), no_experts)
    _edit_config(r("moe"), r("moe_layers_disagree"), fewer_layers)
    shutil.copytree(r("moe_layers_disagree"), r("moe_layers_disagree_tok"))  # with a tokenizer and processor: eval gets to the weights
    from tests.dmu.helpers import make_tokenizer
    from transformers import CLIPImageProcessor

    make_tokenizer(r("moe_layers_disagree_tok")).save_pretrained(r("moe_layers_disagree_tok"))
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(r("moe_layers_disagree_tok"))
    shutil.copytree(r("moe"), r("moe_not_json"))
    with open(r("moe_not_json", "config.json"), "w") as f:
        f.write("{'model_type': 'clipmoe'")
    shutil.copytree(r("moe"), r("moe_latin1"))
    with open(r("moe_latin1", "config.json"), "wb") as f:
        f.write(b'{"model_type": "clipmoe\xe9"}')
    shutil.copytree(r("moe"), r("moe_config_list"))
    with open(r("moe_config_list", "config.json"), "w") as f:
        f.write("[1, 2]")
    os.makedirs(r("moe_config_dir", "config.json"))
    # a user's other model, which must survive any command pointed at it
    tiny_clip(seed=3).save_pretrained(r("users_model"))
    with open(r("a_file.txt"), "w") as f:
        f.write("notes")
    with open(r("not_a_checkpoint.pt"), "w") as f:
        f.write("plain text")
    torch.save({"w": torch.zeros(2)}, r("no_clip.pt"))
    os.makedirs(r("empty_dir"))
    # zero-shot retrieval inputs
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 10, 10)).save(r("img.png"))
    with open(r("retrieval_spaces.json"), "w") as f:
        json.dump([{"image": "img.png", "caption": "   "}], f)
    with open(r("retrieval_list_spaces.json"), "w") as f:
        json.dump([{"image": "img.png", "captions": ["a red square", " \t "]}], f)
    with open(r("retrieval_latin1.json"), "wb") as f:
        f.write('[{"image": "img.png", "caption": "caf\u00e9"}]'.encode("latin-1"))
    with open(r("retrieval_ok.json"), "w") as f:
        json.dump([{"image": "img.png", "caption": "a red square"}], f)
    with open(r("retrieval_object.json"), "w") as f:
        json.dump({"image": "img.png", "caption": "a"}, f)
    with open(r("flickr_spaces.token"), "w") as f:
        f.write("img.png#0\ta red square\nimg.png#1\t   \n")
    with open(r("classnames_latin1.txt"), "wb") as f:
        f.write(b"caf\xe9\n")
    os.makedirs(r("classes", "cat"))
    Image.new("RGB", (8, 8)).save(r("classes", "cat", "0.png"))
    with open(r("templates_latin1.txt"), "wb") as f:
        f.write(b"a photo of a {}\nune photo \xe9 {}\n")
    return root


# (case id, argv with {root} for the fixture folder, texts the one line must contain, path whose bytes must not change)
CASES = [
    ("moe-layers-last-abc", ["upcycle", "{root}/dense", "{root}/out1", "--moe-layers", "last:abc"], ["--moe-layers", "last:N"], None),
    ("moe-layers-last-negative", ["upcycle", "{root}/dense", "{root}/out1", "--moe-layers", "last:-1"], ["--moe-layers"], None),
    ("moe-layers-letters", ["upcycle", "{root}/dense", "{root}/out1", "--moe-layers", "a,b"], ["--moe-layers"], None),
    ("moe-layers-out-of-range", ["upcycle", "{root}/dense_bad_weights", "{root}/out1", "--moe-layers", "0,7"], ["--moe-layers", "entry 7"], None),
    ("moe-layers-last-too-many", ["upcycle", "{root}/dense_bad_weights", "{root}/out1", "--moe-layers", "last:9"], ["--moe-layers", "between 0 and 3"], None),
    ("text-moe-layers-out-of-range", ["upcycle", "{root}/dense_bad_weights", "{root}/out1", "--text-moe-layers", "5"], ["--text-moe-layers", "entry 5"], None),
    ("moe-layers-beyond-text-depth", ["upcycle", "{root}/dense_bad_weights", "{root}/out1", "--moe-layers", "2"], ["text tower", "entry 2"], None),
    ("text-positions-negative", ["upcycle", "{root}/dense", "{root}/out1", "--text-positions", "-1"], ["--text-positions", ">= 1"], None),
    ("text-positions-zero", ["upcycle", "{root}/dense", "{root}/out1", "--text-positions", "0"], ["--text-positions"], None),
    ("text-positions-too-large", ["upcycle", "{root}/dense_bad_weights", "{root}/out1", "--text-positions", "300"], ["--text-positions 300", "16 text positions", "16"], None),
    ("text-positions-vision-only", ["upcycle", "{root}/dense", "{root}/out1", "--vision-only", "--text-positions", "16"], ["--text-positions", "--vision-only"], None),
    ("text-positions-vision-source", ["upcycle", "{root}/vision", "{root}/out1", "--text-positions", "16"], ["--text-positions", "no text tower"], None),
    ("top-k-above-experts", ["upcycle", "{root}/dense_bad_weights", "{root}/out1", "--num-experts", "2", "--top-k", "3"], ["--top-k 3", "--num-experts 2"], None),
    ("num-experts-zero", ["upcycle", "{root}/dense", "{root}/out1", "--num-experts", "0"], ["--num-experts"], None),
    ("src-missing", ["upcycle", "{root}/nowhere", "{root}/out1"], ["nowhere", "no such file"], None),
    ("src-moe-not-dense", ["upcycle", "{root}/moe", "{root}/out1"], ["config.json", "model_type", "'clipmoe'"], None),
    ("src-config-not-json", ["upcycle", "{root}/moe_not_json", "{root}/out1"], ["moe_not_json/config.json", "not valid JSON"], None),
    ("src-text-not-checkpoint", ["upcycle", "{root}/not_a_checkpoint.pt", "{root}/out1"], ["not_a_checkpoint.pt", "refused to unpickle", "Unsupported operand"], None),
    ("src-pt-without-clip", ["upcycle", "{root}/no_clip.pt", "{root}/out1"], ["no_clip.pt", "key 'w'"], None),
    ("dst-is-a-file", ["upcycle", "{root}/dense", "{root}/a_file.txt"], ["a_file.txt", "is a file"], "{root}/a_file.txt"),
    ("dst-under-a-file", ["upcycle", "{root}/dense", "{root}/a_file.txt/sub"], ["a_file.txt", "is a file"], "{root}/a_file.txt"),
    ("dst-holds-another-model", ["upcycle", "{root}/dense", "{root}/users_model"], ["users_model", "--overwrite"], "{root}/users_model"),
    ("dst-not-writable", ["upcycle", "{root}/dense", "/sys/clipmoe-out"], ["/sys/clipmoe-out", "cannot write"], None),
    ("convert-dst-holds-another-model", ["convert-official", "{root}/not_a_checkpoint.pt", "{root}/users_model"], ["users_model", "--overwrite"], "{root}/users_model"),
    ("convert-src-directory", ["convert-official", "{root}/moe", "{root}/out2"], ["moe", "is a directory"], None),
    ("convert-src-not-checkpoint", ["convert-official", "{root}/not_a_checkpoint.pt", "{root}/out2"], ["not_a_checkpoint.pt"], None),
    ("convert-src-dense", ["convert-official", "{root}/no_clip.pt", "{root}/out2"], ["no_clip.pt"], None),
    ("extract-expert-out-of-range", ["extract-expert", "{root}/moe", "4", "{root}/out2"], ["expert 4", "0..3"], None),
    ("extract-expert-into-another-model", ["extract-expert", "{root}/moe", "1", "{root}/users_model"], ["users_model", "--overwrite"],
     "{root}/users_model"),
    ("extract-expert-config-disagrees", ["extract-expert", "{root}/moe_8_in_config", "1", "{root}/out2"], ["moe_8_in_config", "[4,", "[8,"], None),
    ("eval-moe-layers-disagree", ["eval", "retrieval", "--model", "{root}/moe_layers_disagree_tok", "--dataset", "json", "--annotations",
                                  "{root}/retrieval_ok.json"], ["layers.2.mlp.experts", "moe_layers"], None),
    ("info-8-experts-in-config-4-in-weights", ["info", "{root}/moe_8_in_config"], ["model.safetensors", "experts", "[4,", "[8,"], None),
    ("info-config-without-num-experts", ["info", "{root}/moe_no_num_experts"], ["model.safetensors", "experts", "[2,", "[4,"], None),
    ("info-moe-layers-disagree", ["info", "{root}/moe_layers_disagree"], ["layers.2.mlp.experts", "moe_layers"], None),
    ("info-config-not-json", ["info", "{root}/moe_not_json"], ["moe_not_json/config.json", "not valid JSON"], None),
    ("info-config-not-utf8", ["info", "{root}/moe_latin1"], ["moe_latin1/config.json"], None),
    ("info-config-a-list", ["info", "{root}/moe_config_list"], ["config.json", "JSON object"], None),
    ("info-config-a-directory", ["info", "{root}/moe_config_dir"], ["config.json", "not a file"], None),
    ("info-dense-model", ["info", "{root}/dense"], ["config.json", "model_type"], None),
    ("info-a-file", ["info", "{root}/a_file.txt"], ["a_file.txt", "is a file"], None),
    ("info-empty-dir", ["info", "{root}/empty_dir"], ["empty_dir/config.json", "no such file"], None),
    ("retrieval-caption-only-spaces", ["eval", "retrieval", "--model", "{root}/moe", "--dataset", "json", "--annotations", "{root}/retrieval_spaces.json"],
     ["retrieval_spaces.json", "record 0", "empty caption", "--skip-bad"], None),
    ("retrieval-one-of-captions-spaces", ["eval", "retrieval", "--model", "{root}/moe", "--dataset", "json", "--annotations", "{root}/retrieval_list_spaces.json"],
     ["retrieval_list_spaces.json", "record 0", "empty caption"], None),
    ("retrieval-flickr-caption-spaces", ["eval", "retrieval", "--model", "{root}/moe", "--dataset", "flickr-full", "--annotations", "{root}/flickr_spaces.token",
                                         "--images", "{root}"], ["flickr_spaces.token", "line 2", "only spaces"], None),
    ("retrieval-annotations-not-utf8", ["eval", "retrieval", "--model", "{root}/moe", "--dataset", "json", "--annotations", "{root}/retrieval_latin1.json"],
     ["retrieval_latin1.json", "utf-8"], None),
    ("retrieval-annotations-directory", ["eval", "retrieval", "--model", "{root}/moe", "--dataset", "json", "--annotations", "{root}/empty_dir"],
     ["empty_dir", "no usable image-caption pairs"], None),
    ("retrieval-annotations-object", ["eval", "retrieval", "--model", "{root}/moe", "--dataset", "json", "--annotations", "{root}/retrieval_object.json"],
     ["retrieval_object.json", "JSON list"], None),
    ("retrieval-batch-size-zero", ["eval", "retrieval", "--model", "{root}/moe", "--dataset", "json", "--annotations", "{root}/retrieval_spaces.json",
                                   "--batch-size", "0"], ["--batch-size"], None),
    ("classify-classnames-not-utf8", ["eval", "classify", "--model", "{root}/moe", "--dataset", "folder", "--data", "{root}/classes",
                                      "--classnames", "{root}/classnames_latin1.txt"], ["classnames_latin1.txt", "line 1", "UTF-8"], None),
    ("classify-templates-not-utf8", ["eval", "classify", "--model", "{root}/moe", "--dataset", "folder", "--data", "{root}/classes",
                                     "--templates", "{root}/templates_latin1.txt"], ["templates_latin1.txt", "line 2", "UTF-8"], None),
    ("eval-model-without-tokenizer", ["eval", "retrieval", "--model", "{root}/moe", "--dataset", "json", "--annotations", "{root}/retrieval_ok.json"],
     ["moe/tokenizer.json", "missing"], None),
    ("eval-model-vision-only", ["eval", "retrieval", "--model", "{root}/vision", "--dataset", "json", "--annotations", "{root}/retrieval_ok.json"],
     ["vision/config.json", "both towers"], None),
    ("unknown-flag", ["info", "{root}/moe", "--jsn"], ["--jsn"], None),
]


@pytest.mark.parametrize("argv, needles, keep", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(files, capsys, argv, needles, keep):
    assert_refused_in_one_line(main, argv, needles, keep, files, capsys)
    assert not os.path.exists(os.path.join(files, "out1")) and not os.path.exists(os.path.join(files, "out2"))


def test_overwrite_replaces_only_when_asked(files, capsys):
    dst = os.path.join(files, "mine")
    shutil.copytree(os.path.join(files, "users_model"), dst)
    with open(os.path.join(dst, "pytorch_model.bin"), "w") as f:  # a stale weights file must not survive the replacement
        f.write("old")
    before = hash_tree(dst)
    assert main(["upcycle", os.path.join(files, "dense"), dst, "--num-experts", "2", "--top-k", "1"]) == 2
    assert hash_tree(dst) == before
    assert main(["upcycle", os.path.join(files, "dense"), dst, "--num-experts", "2", "--top-k", "1", "--overwrite"]) == 0
    # the new model with its tokenizer (re-saved with the text positions) and image processor; no stale file
    assert sorted(os.listdir(dst)) == ["config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json",
                                       "tokenizer_config.json"]
    assert cm.CLIPMoEModel.from_pretrained(dst).config.vision_config.num_experts == 2
    assert not [n for n in os.listdir(files) if ".clipmoe-" in n]  # no staging folder left behind


def test_a_failed_write_leaves_the_destination_as_it_was(files, monkeypatch, capsys):
    """The output is written to a temporary sibling and moved in place only once complete."""
    dst = os.path.join(files, "half")
    model = cm.upcycle(os.path.join(files, "dense"), num_experts=2, top_k=1)

    def fail(self, path, *a, **k):
        with open(os.path.join(path, "config.json"), "w") as f:
            f.write("{}")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(model), "save_pretrained", fail)
    assert main(["upcycle", os.path.join(files, "dense"), dst, "--num-experts", "2", "--top-k", "1"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert not os.path.exists(dst) and not [n for n in os.listdir(files) if ".clipmoe-" in n]


def test_debug_shows_the_traceback(files, capsys, monkeypatch):
    argv = ["info", os.path.join(files, "moe_8_in_config")]
    with pytest.raises(cm.CLIPMoEError, match="experts"):
        main([*argv, "--debug"])
    monkeypatch.setenv("CLIPMOE_DEBUG", "1")
    with pytest.raises(cm.CLIPMoEError):
        main(argv)


def test_module_and_console_script_share_the_error_path(files):
    """`python -m clipmoe_encoder.cli` and the installed `clipmoe` print the same one line."""
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    argv = ["upcycle", os.path.join(files, "dense"), os.path.join(files, "users_model")]
    module = subprocess.run([sys.executable, "-m", "clipmoe_encoder.cli", *argv], capture_output=True, text=True, env=env, check=False)
    script = os.path.join(os.path.dirname(sys.executable), "clipmoe")
    runs = [module]
    if os.path.isfile(script):
        runs.append(subprocess.run([script, *argv], capture_output=True, text=True, env=env, check=False))
    for run in runs:
        assert run.returncode == 2 and run.stdout == ""
        assert run.stderr.strip().splitlines() == [module.stderr.strip()]
        assert "users_model" in run.stderr and "--overwrite" in run.stderr
