"""The package import and the `clipmoe` parser stay free of torch (so `--help` answers at once),
while `import clipmoe_encoder` still lets AutoModel load a CLIP-MoE directory. Each check runs in
a fresh interpreter: this test process has long imported torch."""

import subprocess
import sys

import pytest


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_parser_builds_without_torch():
    heavy = _run(
        "import sys\n"
        "from clipmoe_encoder.cli import build_parser\n"
        "parser = build_parser()\n"
        "for command in ('upcycle', 'dmu', 'eval'):\n"
        "    assert command in parser.format_help(), command\n"
        "print(sorted(m for m in ('torch', 'sklearn', 'accelerate', 'open_clip') if m in sys.modules))\n"
    )
    assert heavy == "[]"


def test_dmu_run_help_lists_every_setting_without_torch():
    out = _run(
        "import contextlib, dataclasses, io, sys\n"
        "from clipmoe_encoder.cli import build_parser\n"
        "from clipmoe_encoder.dmu.settings import DMUSettings\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):\n"
        "    build_parser().parse_args(['dmu', 'run', '--help'])\n"
        "missing = [f.name for f in dataclasses.fields(DMUSettings) if '--' + f.name.replace('_', '-') not in buf.getvalue()]\n"
        "print(missing, 'torch' in sys.modules)\n"
    )
    assert out == "[] False"


@pytest.mark.legacy
def test_import_registers_auto_classes(tmp_path):
    from tests.encoder.conftest import TEXT, VISION

    import clipmoe_encoder as cm

    cm.CLIPMoEModel(cm.CLIPMoEConfig(text_config=TEXT, vision_config=VISION, projection_dim=8)).save_pretrained(tmp_path)
    cm.CLIPMoEVisionModel(cm.CLIPMoEVisionConfig(**VISION)).save_pretrained(tmp_path / "vision")
    out = _run(
        "import sys\n"
        "import clipmoe_encoder\n"
        "light = 'torch' not in sys.modules\n"
        "from transformers import AutoConfig, AutoModel\n"
        f"two = AutoModel.from_pretrained({str(tmp_path)!r})\n"
        f"vision = AutoModel.from_config(AutoConfig.from_pretrained({str(tmp_path / 'vision')!r}))\n"
        "print(light, type(two).__name__, type(vision).__name__)\n"
    )
    assert out == "True CLIPMoEModel CLIPMoEVisionModel"


def test_lazy_names_resolve():
    import clipmoe_encoder as cm
    from clipmoe_encoder import zeroshot

    for name in cm.__all__:
        assert getattr(cm, name) is not None
    for name in zeroshot.__all__:
        assert getattr(zeroshot, name) is not None
    with pytest.raises(AttributeError):
        cm.not_a_name  # noqa: B018


def test_every_dmu_setting_says_what_it_means_and_checks_its_values():
    import dataclasses

    from clipmoe_encoder.cli import build_parser
    from clipmoe_encoder.dmu.settings import DMUSettings
    from clipmoe_encoder.errors import CLIPMoEError

    for field in dataclasses.fields(DMUSettings):
        assert len(field.metadata["help"]) > 15, field.name
    with pytest.raises(SystemExit) as exit_info:  # argparse: one usage line, exit 2
        build_parser().parse_args(["dmu", "run", "--base", "b", "--data", "d", "--out", "o", "--small-clusters", "keep"])
    assert exit_info.value.code == 2
    with pytest.raises(CLIPMoEError, match="--mcl-towers 'text': must be one of both, vision"):
        DMUSettings(mcl_towers="text").validate()
    assert DMUSettings().validate() == DMUSettings()
