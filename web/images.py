"""Opening uploaded and stored images for the routes that decode them, without decoding bombs.

A PNG of 12 KB can declare 10,000 x 10,000 pixels: a /view preview of it took 1.1 GB and seconds
of one web process. Pillow refuses only past twice its own limit (179 million pixels) and merely
warns between; and its limit still allows 360 MB per RGBA copy. The header gives the size before
any pixel is decoded, so images past MAX_PIXELS are refused there, with a 400 saying so. Routes
that store bytes without decoding them (/upload/image, /view without preview or channel) never
come here: ComfyUI stores and serves whatever is uploaded, and so does the farm.
"""

from __future__ import annotations

from PIL import Image, UnidentifiedImageError

from farm.image_limits import MAX_PIXELS, MAX_SIDE

# What decoding a file that opened may still raise (a truncated or corrupt image, an unsupported
# mode for the target format); Pillow raises DecompressionBombError instead of an OSError.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
NOT_AN_IMAGE = "The file is not an image that can be converted"


class ImageRefused(Exception):
    """An image the farm will not decode: `type` and `message` for the error shape, `details` for people."""

    def __init__(self, type_: str, message: str, details: str):
        super().__init__(message)
        self.type, self.message, self.details = type_, message, details


def open_image(stream, name: str = "the file") -> Image.Image:
    """Image.open(stream) for decoding, or ImageRefused: not an image, or more than MAX_PIXELS."""
    try:
        image = Image.open(stream)
    except Image.DecompressionBombError as exception:
        raise ImageRefused("image_too_large", "The image is too large to decode", f"{name}: {exception}") from None
    except UnidentifiedImageError:
        # Not str(exception): it names the server's file object (a temporary file, a path).
        raise ImageRefused("invalid_image", NOT_AN_IMAGE, f"{name}: not an image format the farm reads") from None
    except DECODE_ERRORS as exception:
        raise ImageRefused("invalid_image", NOT_AN_IMAGE, f"{name}: {exception}") from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        raise ImageRefused("image_too_large", "The image is too large to decode",
                           f"{name}: {width} x {height} pixels; at most {MAX_PIXELS} ({MAX_SIDE} x {MAX_SIDE}) "
                           "are decoded")
    return image
