"""The built-in OpenAI prompts and the template / ImageNet class-name resolution."""

import pytest

from clipmoe_encoder import CLIPMoEError
from clipmoe_encoder.zeroshot.cli import read_classification
from clipmoe_encoder.zeroshot.templates import (
    OPENAI_IMAGENET_TEMPLATES,
    resolve_templates,
)

from .conftest import write_image


def test_openai_templates_are_the_80():
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80 and len(set(OPENAI_IMAGENET_TEMPLATES)) == 80
    assert all(t.count("{}") == 1 for t in OPENAI_IMAGENET_TEMPLATES)
    assert OPENAI_IMAGENET_TEMPLATES[0] == "a bad photo of a {}." and OPENAI_IMAGENET_TEMPLATES[-1] == "a tattoo of the {}."


def test_openai_templates_agree_with_open_clip():
    metadata = pytest.importorskip("open_clip.zero_shot_metadata")
    assert list(OPENAI_IMAGENET_TEMPLATES) == [f("{}") for f in metadata.OPENAI_IMAGENET_TEMPLATES]


def test_resolve_templates(tmp_path):
    assert resolve_templates(None) == resolve_templates("openai") == list(OPENAI_IMAGENET_TEMPLATES)
    assert resolve_templates("simple") == ["a photo of a {}."]
    assert resolve_templates(["x {}"]) == ["x {}"]
    path = tmp_path / "t.txt"
    path.write_text("# comment\n  itap of a {}.  \n\na {} in a video game.\n")
    assert resolve_templates(str(path)) == ["itap of a {}.", "a {} in a video game."]
    path.write_text("# only a comment\n")
    with pytest.raises(CLIPMoEError, match="no templates"):
        resolve_templates(str(path))
    path.write_text("a {}.\na {} {}.\n")
    with pytest.raises(CLIPMoEError, match="line 2"):
        resolve_templates(str(path))
    with pytest.raises(CLIPMoEError, match="no such templates file"):
        resolve_templates(str(tmp_path / "missing.txt"))
    with pytest.raises(CLIPMoEError, match="exactly one"):
        resolve_templates(["no slot"])


def test_imagenet_1000_wnid_folders_get_openai_class_names(tmp_path):
    metadata = pytest.importorskip("open_clip.zero_shot_metadata")
    image = write_image(tmp_path / "x.png", size=(2, 2)).read_bytes()
    wnids = sorted(f"n{10000000 + 37 * i:08d}" for i in range(1000))  # real wnids sort the same way
    for wnid in wnids:
        (tmp_path / "val" / wnid).mkdir(parents=True)
        (tmp_path / "val" / wnid / "a.JPEG").write_bytes(image)
    paths, labels, names = read_classification("imagenet", str(tmp_path))
    assert len(paths) == 1000 and labels[:3] == [0, 1, 2]
    assert names == list(metadata.IMAGENET_CLASSNAMES) and names[0] == "tench"
    # a plain folder dataset keeps its folder names
    assert read_classification("folder", str(tmp_path / "val"))[2][:2] == wnids[:2]
