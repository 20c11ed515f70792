import io

import pytest
from PIL import Image, ImageFile

from clipmoe_encoder.images import DECODE_ERRORS, decode_rgb


def test_a_truncated_file_is_an_error_even_when_another_library_allows_them(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    Image.new("RGBA", (64, 64), (10, 20, 30, 128)).save(buffer, "PNG")
    good = tmp_path / "good.png"
    good.write_bytes(buffer.getvalue())
    assert decode_rgb(good).getpixel((0, 0)) == (10, 20, 30)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(buffer.getvalue()[:80])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # what importing lmms-eval does
    with pytest.raises(DECODE_ERRORS):
        decode_rgb(truncated)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is left as it was
