"""Decoding an image file strictly, whatever other libraries set globally."""

from __future__ import annotations

import contextlib

from PIL import Image, ImageFile

# What PIL raises for a file it cannot decode (truncated, corrupt, not an image, too large).
DECODE_ERRORS = (Image.UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError)


@contextlib.contextmanager
def _strict_truncation():
    # lmms-eval sets ImageFile.LOAD_TRUNCATED_IMAGES = True when imported, which would turn a
    # truncated file into a silently grey-padded image; keep it an error while we decode.
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def decode_rgb(source) -> Image.Image:
    """Open a path or binary file object, decode it fully now, and return it as RGB (grayscale,
    palette and RGBA images converted; alpha dropped, as CLIP's loaders do). Raises
    FileNotFoundError or one of DECODE_ERRORS; callers turn them into their own one-line error."""
    with _strict_truncation(), Image.open(source) as image:
        return image.convert("RGB")
