"""The LLaVA launch files are package data: found through `llava_integration.launch_dir()` (without
importing torch), shipped by the wheel (pyproject package-data), and run by the thin
scripts/llava wrappers of a checkout."""

import fnmatch
import os
import subprocess
import sys

import pytest

import llava_integration

pytestmark = pytest.mark.legacy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCH_FILES = {"common.sh", "pretrain.sh", "finetune.sh", "zero2.json", "zero3.json"}


def test_launch_dir_holds_the_launch_files():
    found = set(os.listdir(llava_integration.launch_dir()))
    assert LAUNCH_FILES <= found
    assert os.path.dirname(llava_integration.launch_dir()) == os.path.dirname(os.path.abspath(llava_integration.__file__))


def test_launch_dir_answers_without_torch():
    code = "import sys, llava_integration; llava_integration.launch_dir(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                         text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "False"


def test_pyproject_ships_every_launch_file():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        package_data = tomllib.load(f)["tool"]["setuptools"]["package-data"]
    globs = package_data.get("llava_integration", []) + package_data.get("*", [])
    for name in os.listdir(llava_integration.launch_dir()):
        assert any(fnmatch.fnmatch(f"launch/{name}", g) for g in globs), name


@pytest.mark.parametrize("script", ["pretrain.sh", "finetune.sh"])
def test_checkout_wrappers_run_the_package_scripts(script):
    wrapper = os.path.join(REPO, "scripts", "llava", script)
    with open(wrapper) as f:
        assert f"llava_integration/launch/{script}" in f.read()
    proc = subprocess.run(["bash", wrapper], env=dict(os.environ, NUM_GPUS="none", PYTHON=sys.executable),
                          capture_output=True, text=True, check=False, cwd="/")
    assert proc.returncode == 2 and proc.stderr.startswith("error: NUM_GPUS=none")  # common.sh's check ran
