"""openai/CLIP-style TorchScript `.pt` archives: weights read without running code, malicious ones refused."""

import json
import os
import pickle
import zipfile

import pytest
import torch

from clipmoe_encoder import CLIPMoEError
from clipmoe_encoder.checkpoint_io import load_pickled_state_dict
from clipmoe_encoder.cli import main
from clipmoe_encoder.torchscript_weights import (
    is_torchscript_archive,
    read_torchscript_state_dict,
)

open_clip = pytest.importorskip("open_clip")

# OpenAI's key layout and head rule (width / 64), small: open_clip builds the same modules as openai/CLIP
TINY = "torchscript-test-tiny-quickgelu"
CONFIG = {"embed_dim": 16, "quick_gelu": True,
          "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 64},
          "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2}}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("config")
    (directory / f"{TINY}.json").write_text(json.dumps(CONFIG))
    open_clip.add_model_config(directory / f"{TINY}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY).eval()
    with torch.no_grad():  # non-trivial norms and biases, so that a misplaced tensor shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln" in name or name.startswith("ln"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _archive(model, path, how):
    """A real TorchScript archive, as openai/CLIP ships (traced) or open_clip's jit=True makes (scripted)."""
    if how == "script":
        scripted = torch.jit.script(model)
    else:
        image, text = torch.randn(2, 3, 32, 32), torch.randint(0, 49408, (2, 16))
        scripted = torch.jit.trace_module(model, {"encode_image": (image,), "encode_text": (text,)})
    torch.jit.save(scripted, str(path))
    return path


@pytest.mark.parametrize("how", ["trace", "script"])
def test_weights_equal_torchscript_state_dict(tiny_model, tmp_path, how):
    path = _archive(tiny_model, tmp_path / f"{how}.pt", how)
    assert is_torchscript_archive(path)
    weights = load_pickled_state_dict(path)
    # reference: torch's own loader, which compiles the archive's code (fine for a file we just made)
    reference = torch.jit.load(str(path), map_location="cpu").state_dict()
    assert sorted(weights) == sorted(reference)
    for key, value in reference.items():
        assert weights[key].dtype == value.dtype and torch.equal(weights[key], value), key
    for key, value in tiny_model.state_dict().items():
        torch.testing.assert_close(weights[key], value, rtol=0, atol=0)


def test_upcycle_torchscript_archive(tiny_model, tmp_path, capsys):
    """`clipmoe upcycle openai.pt` works on the archive and computes the original image features."""
    import clipmoe_encoder as cm

    path = _archive(tiny_model, tmp_path / "ViT-tiny.pt", "trace")
    assert main(["upcycle", str(path), str(tmp_path / "moe"), "--num-experts", "2", "--top-k", "1"]) == 0
    assert "wrote" in capsys.readouterr().out
    moe = cm.CLIPMoEModel.from_pretrained(tmp_path / "moe").eval()
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(moe.get_image_features(pixels), tiny_model.encode_image(pixels), atol=1e-5, rtol=1e-4)


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _evil_archive(path, payload):
    """A zip shaped like a TorchScript archive whose data.pkl would run a shell command when unpickled."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps(payload, protocol=2))
        archive.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
        archive.writestr("evil/code/__torch__/model.py", "class Model(Module):\n  pass\n")
        archive.writestr("evil/version", "4\n")
    return path


def test_malicious_archive_refused_without_running(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = _evil_archive(tmp_path / "evil.pt", {"weight": _RunsShell(marker)})
    with pytest.raises(CLIPMoEError) as err:
        load_pickled_state_dict(path)
    message = str(err.value)
    assert "refused to read: its data.pkl calls posix.system" in message or "calls os.system" in message
    assert "torch.jit.load" in message and "weights_only=False" not in message
    assert not marker.exists()
    # the same through the command: one line, exit 2, nothing written
    assert main(["upcycle", str(path), str(tmp_path / "out")]) == 2
    out = capsys.readouterr().err
    assert out.count("\n") == 1 and out.startswith("clipmoe upcycle: error:") and "weights_only=False" not in out
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_plain_malicious_pickle_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": _RunsShell(marker)}, path)
    with pytest.raises(CLIPMoEError, match="refused to unpickle") as err:
        load_pickled_state_dict(path)
    assert "weights_only=False" not in str(err.value) and not marker.exists()


def test_broken_archives(tiny_model, tmp_path):
    path = _archive(tiny_model, tmp_path / "ok.pt", "trace")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        data = {n: archive.read(n) for n in names}
    storage = next(n for n in names if "/data/" in n)
    broken = tmp_path / "missing.pt"
    with zipfile.ZipFile(broken, "w") as archive:
        for name, blob in data.items():
            if name != storage:
                archive.writestr(name, blob)
    with pytest.raises(CLIPMoEError, match=f"storage {storage} is missing from the archive"):
        read_torchscript_state_dict(broken)
    short = tmp_path / "short.pt"
    with zipfile.ZipFile(short, "w") as archive:
        for name, blob in data.items():
            archive.writestr(name, blob[:-4] if name == storage and len(blob) > 4 else blob)
    with pytest.raises(CLIPMoEError, match="bytes, expected"):
        read_torchscript_state_dict(short)
    # torch.save's own zip format has no code/: not taken for TorchScript, read by torch.load as before
    torch.save(tiny_model.state_dict(), tmp_path / "plain.pt")
    assert not is_torchscript_archive(tmp_path / "plain.pt")
    assert sorted(load_pickled_state_dict(tmp_path / "plain.pt")) == sorted(tiny_model.state_dict())


def test_open_clip_encoder_reads_the_archive(tiny_model, tmp_path):
    """`clipmoe eval --model open_clip:<name>:openai.pt`: open_clip alone would refuse (or run) it."""
    from clipmoe_encoder.zeroshot import load_encoder

    path = _archive(tiny_model, tmp_path / "openai.pt", "trace")
    encoder = load_encoder(f"open_clip:{TINY}:{path}")
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(encoder.model.encode_image(pixels), tiny_model.encode_image(pixels), rtol=0, atol=0)
    evil = _evil_archive(tmp_path / "evil.pt", {"weight": _RunsShell(tmp_path / "pwned")})
    with pytest.raises(CLIPMoEError, match="refused to read"):
        load_encoder(f"open_clip:{TINY}:{evil}")
    assert not (tmp_path / "pwned").exists()
