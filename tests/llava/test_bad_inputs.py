"""Bad input to the LLaVA training entry point (`python -m llava_integration.train`, also under the
DeepSpeed launcher) and to the launch scripts: one `error:` line naming the flag, variable or file,
exit code 2, no traceback (shown with --debug / $CLIPMOE_DEBUG=1), before any model is loaded."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from llava_integration import launch_dir
from llava_integration.train import main

pytestmark = pytest.mark.legacy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def bad(world, tmp_path_factory):
    """Files for the bad cases, next to good ones (the tiny world)."""
    root = tmp_path_factory.mktemp("bad-llava-inputs")

    def tower_copy(name, edit=None, config_text=None):
        path = root / name
        shutil.copytree(world.tower, path)
        config = json.loads((path / "config.json").read_text())
        if edit:
            edit(config)
        (path / "config.json").write_text(config_text if config_text is not None else json.dumps(config))
        return str(path)

    (root / "object.json").write_text('{"id": 1, "conversations": []}')
    (root / "not-json.json").write_text("{ zero_optimization")
    (root / "a-file").write_text("x")
    os.makedirs(root / "no-config")
    return {
        "dense": tower_copy("dense-tower", lambda c: c.update(model_type="clip_vision_model")),
        "broken": tower_copy("broken-tower", config_text="{ not json"),
        "eight": tower_copy("eight-experts", lambda c: c.update(num_experts=8)),
        "zero": tower_copy("zero-experts", lambda c: c.update(num_experts=0)),
        "no_config": str(root / "no-config"),
        "object": str(root / "object.json"),
        "not_json": str(root / "not-json.json"),
        "file": str(root / "a-file"),
        "missing": str(root / "missing"),
        "tower": world.tower,  # a good one
    }


def good_args(world):
    return ["--model_name_or_path", world.llm, "--data_path", world.pretrain_json, "--image_folder", world.images,
            "--vision_tower", "clipmoe:" + world.tower, "--deepspeed", os.path.join(launch_dir(), "zero2.json"),
            "--output_dir", os.path.join(world.root, "checkpoints", "bad-input-test")]


# (case, extra arguments (last one wins, as in LLaVA's parser), environment, text the error must contain)
CASES = [
    ("tower env unset", ["--vision_tower", "clipmoe"], {}, "$CLIPMOE_VISION_TOWER is not set"),
    ("tower env missing dir", ["--vision_tower", "clipmoe"], {"CLIPMOE_VISION_TOWER": "{missing}"},
     "$CLIPMOE_VISION_TOWER={missing}: {missing}: no such file or directory"),
    ("clipmoe: without path", ["--vision_tower", "clipmoe:"], {}, "nothing after 'clipmoe:'"),
    ("clipmoe: missing dir", ["--vision_tower", "clipmoe:{missing}"], {}, "--vision_tower clipmoe:{missing}: {missing}: no such"),
    ("tower is a dense CLIP", ["--vision_tower", "clipmoe:{dense}"], {}, "{dense}/config.json: field 'model_type'"),
    ("tower config not JSON", ["--vision_tower", "clipmoe:{broken}"], {}, "{broken}/config.json: not valid JSON"),
    ("tower without config.json", ["--vision_tower", "clipmoe:{no_config}"], {}, "{no_config}/config.json: no such file"),
    ("tower config vs weights", ["--vision_tower", "clipmoe:{eight}"], {}, "{eight}/model.safetensors: tensor"),
    ("tower config bad field", ["--vision_tower", "clipmoe:{zero}"], {}, "{zero}/config.json: num_experts"),
    ("unknown tower name", ["--vision_tower", "my-tower"], {}, "unknown vision tower 'my-tower'"),
    ("data file missing", ["--data_path", "{missing}"], {}, "--data_path {missing}: no such file"),
    ("data file a directory", ["--data_path", "{no_config}"], {}, "--data_path {no_config}: not a file"),
    ("data file one object", ["--data_path", "{object}"], {}, "--data_path {object}: expected a JSON list"),
    ("image folder missing", ["--image_folder", "{missing}"], {}, "--image_folder {missing}: no such directory"),
    ("adapter missing", ["--pretrain_mm_mlp_adapter", "{missing}"], {}, "--pretrain_mm_mlp_adapter {missing}: no such file"),
    ("deepspeed config missing", ["--deepspeed", "{missing}"], {}, "--deepspeed {missing}: no such file"),
    ("deepspeed config not JSON", ["--deepspeed", "{not_json}"], {}, "--deepspeed {not_json}: not valid JSON"),
    ("model dir missing", ["--model_name_or_path", "{missing}"], {}, "--model_name_or_path {missing}: no such model directory"),
    ("model dir not a model", ["--model_name_or_path", "{no_config}"], {}, "--model_name_or_path {no_config}: no config.json"),
    ("output dir is a file", ["--output_dir", "{file}"], {}, "--output_dir {file}: exists and is not a directory"),
    ("tune mode unknown", ["--mm_vision_moe_tune", "experts"], {}, "--mm_vision_moe_tune experts: expected one of"),
    ("moe lr not a number", ["--mm_vision_moe_lr", "fast"], {}, "--mm_vision_moe_lr fast: expected a number > 0"),
    ("moe lr zero", ["--mm_vision_moe_lr=0"], {}, "--mm_vision_moe_lr 0: expected a number > 0"),
    ("aux coef negative", ["--mm_vision_moe_aux_loss_coef", "-0.1"], {}, "--mm_vision_moe_aux_loss_coef -0.1: expected a number >= 0"),
    ("attention unknown", ["--attn_implementation", "flash"], {}, "--attn_implementation flash: expected one of"),
]


@pytest.mark.parametrize("case, extra, env, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_exit_2(world, bad, monkeypatch, capsys, case, extra, env, expected):
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(**bad))
    argv = good_args(world) + [a.format(**bad) for a in extra]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert expected.format(**bad) in err, err


def test_good_arguments_pass_the_checks(world):
    from llava_integration.checks import check_arguments

    check_arguments(good_args(world))
    check_arguments(good_args(world) + ["--vision_tower", "openai/clip-vit-large-patch14-336"])  # LLaVA's own


def run(cmd, **env):
    full = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
                PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], DS_ACCELERATOR="cpu")
    full.pop("CLIPMOE_VISION_TOWER", None)
    full.update(env)
    return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=600, check=False, cwd=REPO)


def test_entry_point_checks_before_loading_and_debug_shows_the_traceback(world):
    argv = good_args(world) + ["--vision_tower", "clipmoe"]
    probe = ("import sys\nfrom llava_integration.train import main\ntry:\n    main(sys.argv[1:])\n"
             "except SystemExit as e:\n    print(e.code, 'llava.train.train' in sys.modules, 'llava.model' in sys.modules)")
    proc = run([sys.executable, "-c", probe, *argv])
    assert proc.stdout.split() == ["2", "False", "False"]  # neither LLaVA's models nor its trainer were imported
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "CLIPMOE_VISION_TOWER" in proc.stderr

    proc = run([sys.executable, "-m", "llava_integration.train", *argv, "--debug"])
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "CLIPMoEError" in proc.stderr
    proc = run([sys.executable, "-m", "llava_integration.train", *argv], CLIPMOE_DEBUG="1")
    assert proc.returncode == 1 and "Traceback" in proc.stderr


@pytest.mark.slow
def test_under_the_deepspeed_launcher(world):
    launcher = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    proc = run([launcher, "--num_gpus", "1", "--master_port", "29591", "--module", "llava_integration.train",
                *good_args(world), "--vision_tower", "clipmoe"])
    log = proc.stdout + proc.stderr
    errors = [line for line in log.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and "Traceback" not in log, log[-3000:]
    assert errors == [errors[0]] and "$CLIPMOE_VISION_TOWER is not set" in errors[0]


SCRIPT_CASES = [
    ("tower env unset", {}, "$CLIPMOE_VISION_TOWER is not set"),
    ("data file missing", {"DATA_PATH": "{missing}"}, "--data_path {missing}: no such file"),
    ("image folder missing", {"IMAGE_FOLDER": "{missing}"}, "--image_folder {missing}: no such directory"),
    ("hostfile missing", {"HOSTFILE": "{missing}"}, "HOSTFILE={missing}: no such file"),
    ("gpus not a number", {"NUM_GPUS": "eight"}, "NUM_GPUS=eight: expected a positive whole number"),
    ("ranks do not divide the batch", {"NUM_GPUS": "3", "CLIPMOE_VISION_TOWER": "{tower}"},
     "global batch 256 cannot be split over 3 ranks (nodes x GPUs per node): set GLOBAL_BATCH=255"),
    ("per-device batch too large", {"NUM_GPUS": "16", "CLIPMOE_VISION_TOWER": "{tower}"},
     "global batch 256 is not a multiple of PER_DEVICE_BATCH=32 x 16 ranks (set PER_DEVICE_BATCH=16"),
    ("per-device batch no divisor", {"NUM_GPUS": "2", "PER_DEVICE_BATCH": "24", "CLIPMOE_VISION_TOWER": "{tower}"},
     "(set PER_DEVICE_BATCH=16, or unset it"),
    ("python missing", {"PYTHON": "{missing}"}, "PYTHON={missing}: no such interpreter"),
    ("save steps not a number", {"SAVE_STEPS": "1e3", "CLIPMOE_VISION_TOWER": "{tower}"},
     "SAVE_STEPS=1e3: expected a positive whole number of optimizer steps"),
]


@pytest.mark.parametrize("case, env, expected", SCRIPT_CASES, ids=[c[0] for c in SCRIPT_CASES])
def test_script_bad_setting_is_one_error_line_and_exit_2(world, bad, case, env, expected):
    settings = {"MODEL": world.llm, "DATA_PATH": world.pretrain_json, "IMAGE_FOLDER": world.images, "NUM_GPUS": "1",
                "PER_DEVICE_BATCH": "32", "OUTPUT_DIR": os.path.join(world.root, "checkpoints", "bad-script"),
                "PYTHON": sys.executable}
    settings.update({k: v.format(**bad) for k, v in env.items()})
    proc = run(["bash", os.path.join(REPO, "scripts", "llava", "pretrain.sh")], **settings)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stdout == "" and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert expected.format(**bad) in proc.stderr
