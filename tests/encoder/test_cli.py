import json

import torch

import clipmoe_encoder as cm
from clipmoe_encoder.cli import main
from tests.encoder.conftest import tiny_clip


def test_upcycle_then_info(tmp_path, capsys):
    tiny_clip().save_pretrained(tmp_path / "dense")
    assert main(["upcycle", str(tmp_path / "dense"), str(tmp_path / "moe"), "--num-experts", "4", "--top-k", "2",
                 "--moe-layers", "last:2", "--text-moe-layers", "0"]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "moe"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["towers"]["vision"]["moe_layers"] == [1, 2]
    assert info["towers"]["text"]["moe_layers"] == [0]
    model = cm.CLIPMoEModel.from_pretrained(tmp_path / "moe")
    total = sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert info["total_parameters"] == total
    assert info["active_parameters"] == total - experts // 2  # top-2 of 4: half of the expert weights run per token


def test_vision_only_upcycle_and_errors(tmp_path, capsys):
    tiny_clip().save_pretrained(tmp_path / "dense")
    assert main(["upcycle", str(tmp_path / "dense"), str(tmp_path / "tower"), "--vision-only", "--num-experts", "2", "--top-k", "1"]) == 0
    assert type(cm.CLIPMoEVisionModel.from_pretrained(tmp_path / "tower")) is cm.CLIPMoEVisionModel
    capsys.readouterr()
    assert main(["info", str(tmp_path / "dense")]) == 2
    err = capsys.readouterr().err
    assert "model_type" in err and "Traceback" not in err
    assert main(["upcycle", str(tmp_path / "dense"), str(tmp_path / "x"), "--moe-layers", "a,b"]) == 2


def test_convert_official_command(tmp_path, capsys):
    from tests.encoder.test_checkpoints import _distinct_moe, official_layout

    torch.save(official_layout(_distinct_moe()), tmp_path / "release.pt")
    assert main(["convert-official", str(tmp_path / "release.pt"), str(tmp_path / "hf")]) == 0
    assert "3 experts, top-2" in capsys.readouterr().out
