"""Torch operations on ComfyUI IMAGE tensors ([B,H,W,C] float 0..1) and MASK tensors ([B,H,W])."""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

from farm.image_limits import MAX_PIXELS, MAX_SIDE

# Formats whose extra frames are not an animation (MPO holds stereo or preview views).
_SINGLE_IMAGE_FORMATS = {"MPO"}


def solid(width: int, height: int, batch: int, color: int) -> torch.Tensor:
    """A batch of images filled with the RGB of a 0xRRGGBB integer."""
    rgb = torch.tensor([((color >> shift) & 0xFF) / 0xFF for shift in (16, 8, 0)], dtype=torch.float32)
    return rgb.expand(batch, height, width, 3).clone()


def invert(image: torch.Tensor) -> torch.Tensor:
    return 1.0 - image


def scale_dimensions(width: int, height: int, target_width: int, target_height: int) -> tuple[int, int]:
    """ImageScale's size rule: a target of 0 follows the other one, keeping the aspect ratio."""
    if target_width == 0 and target_height == 0:
        return width, height
    if target_width == 0:
        return max(1, round(width * target_height / height)), target_height
    if target_height == 0:
        return target_width, max(1, round(height * target_width / width))
    return target_width, target_height


def upscale(image: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """Resize a batch to width x height; crop "center" first trims the source to the target aspect."""
    samples = image.movedim(-1, 1)
    if crop == "center":
        samples = _crop_to_aspect(samples, width, height)
    elif crop != "disabled":
        raise ValueError(f"unknown crop {crop!r}")
    if method == "lanczos":
        return _lanczos(samples.movedim(1, -1), width, height)
    # The other choices offered by farm.nodes.image are interpolate's own mode names.
    resized = F.interpolate(samples, size=(height, width), mode=method)
    if method == "bicubic":
        # Bicubic overshoots at edges; IMAGE values must stay displayable.
        resized = resized.clamp(0.0, 1.0)
    return resized.movedim(1, -1)


def _crop_to_aspect(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The centered part of [B,C,H,W] samples that has the aspect ratio width:height."""
    old_height, old_width = samples.shape[-2], samples.shape[-1]
    old_aspect = old_width / old_height
    new_aspect = width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_width - old_width * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_height - old_height * (old_aspect / new_aspect)) / 2)
    return samples[..., y:old_height - y, x:old_width - x]


def _lanczos(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Lanczos through PIL, image by image; PIL works on 8 bits, so values come back quantized."""
    frames = []
    for frame in image:
        array = _to_uint8(frame)
        squeeze = array.shape[-1] == 1
        pil = Image.fromarray(array[..., 0] if squeeze else array)
        resized = np.array(pil.resize((width, height), resample=Image.LANCZOS)).astype(np.float32) / 255.0
        frames.append(torch.from_numpy(resized[..., None] if squeeze else resized))
    return torch.stack(frames).to(image.device, image.dtype)


def blend(image1: torch.Tensor, image2: torch.Tensor, factor: float, mode: str) -> torch.Tensor:
    """ImageBlend: mix image1 with `mode`(image1, image2) by `factor`; image2 is fitted to image1."""
    if image2.shape[1:3] != image1.shape[1:3]:
        image2 = upscale(image2, image1.shape[2], image1.shape[1], "bicubic", "center")
    image2 = image2.to(image1.device)
    blended = _blend_mode(image1, image2, mode)
    return (image1 * (1 - factor) + blended * factor).clamp(0.0, 1.0)


def _blend_mode(img1: torch.Tensor, img2: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "normal":
        return img2
    if mode == "multiply":
        return img1 * img2
    if mode == "screen":
        return 1 - (1 - img1) * (1 - img2)
    if mode == "overlay":
        return torch.where(img1 <= 0.5, 2 * img1 * img2, 1 - 2 * (1 - img1) * (1 - img2))
    if mode == "soft_light":
        return torch.where(
            img2 <= 0.5,
            img1 - (1 - 2 * img2) * img1 * (1 - img1),
            img1 + (2 * img2 - 1) * (_soft_light_curve(img1) - img1),
        )
    if mode == "difference":
        return img1 - img2
    raise ValueError(f"unknown blend mode {mode!r}")


def _soft_light_curve(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.25, ((16 * x - 12) * x + 4) * x, torch.sqrt(x))


def _to_uint8(image_hwc: torch.Tensor) -> np.ndarray:
    # Truncation, not rounding, is what ComfyUI does; saved pixels must match its files.
    return np.clip(255.0 * image_hwc.detach().cpu().float().numpy(), 0, 255).astype(np.uint8)


def encode_png(image_hwc: torch.Tensor, text_chunks: dict[str, str], compress_level: int) -> bytes:
    """One [H,W,C] image as PNG bytes with one tEXt chunk per entry of `text_chunks`."""
    info = PngInfo()
    for key, value in text_chunks.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.fromarray(_to_uint8(image_hwc)).save(buffer, format="PNG", pnginfo=info, compress_level=compress_level)
    return buffer.getvalue()


def load_image(source) -> tuple[torch.Tensor, torch.Tensor]:
    """A file (path or binary file object) as IMAGE [N,H,W,3] and MASK [N,H,W], one per frame.

    The mask is 1 - alpha; a frame without alpha gets a 64x64 zero mask, as in ComfyUI. Frames
    whose size differs from the first are skipped.
    """
    try:
        opened = Image.open(source)
    except Image.DecompressionBombError as exception:  # Pillow's own limit, past twice 89 MP
        raise ValueError(f"the image is too large to decode: {exception}") from None
    with opened:
        width, height = opened.size  # from the header: nothing decoded yet
        if width * height > MAX_PIXELS:
            raise ValueError(f"the image is {width} x {height} pixels; the farm decodes at most {MAX_PIXELS:,} "
                             f"({MAX_SIDE} x {MAX_SIDE})")
        images, masks = [], []
        for frame in ImageSequence.Iterator(opened):
            frame = ImageOps.exif_transpose(frame)
            if frame.mode == "I":
                # 32-bit integer frames (16-bit PNGs) come down to the 8-bit range before RGB.
                frame = frame.point(lambda value: value * (1 / 255))
            rgb = frame.convert("RGB")
            if images and rgb.size != (images[0].shape[1], images[0].shape[0]):
                continue
            images.append(torch.from_numpy(np.array(rgb).astype(np.float32) / 255.0))
            masks.append(_frame_mask(frame))
        if opened.format in _SINGLE_IMAGE_FORMATS:
            images, masks = images[:1], masks[:1]
    height, width = images[0].shape[:2]
    if len({tuple(mask.shape) for mask in masks}) > 1:
        # Frames with and without alpha cannot stack as they are; missing alpha is "keep all".
        masks = [mask if mask.shape == (height, width) else torch.zeros((height, width)) for mask in masks]
    return torch.stack(images), torch.stack(masks)


def _frame_mask(frame: Image.Image) -> torch.Tensor:
    if "A" in frame.getbands():
        alpha = frame.getchannel("A")
    elif frame.mode == "P" and "transparency" in frame.info:
        alpha = frame.convert("RGBA").getchannel("A")
    else:
        return torch.zeros((64, 64), dtype=torch.float32)
    return 1.0 - torch.from_numpy(np.array(alpha).astype(np.float32) / 255.0)
