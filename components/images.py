"""Small image helpers: colour maps, Grad-CAM overlays, explanation pictures and fast PNG
encoding.

Everything takes and returns numpy arrays so the Flask routes and the activation grid share
one implementation and tests can check pixels exactly.
"""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from PIL import Image

from components.theme import DIVERGING_LUT, INFERNO_LUT

UInt8Image = npt.NDArray[np.uint8]
FloatMap = npt.NDArray[np.floating]

# zlib level 1: PNGs here are rendered per request, so encoding speed beats a few % of bytes.
PNG_COMPRESS_LEVEL = 1
# How much of the heat colour a CAM of 1.0 contributes over the image.
CAM_ALPHA = 0.55


def encode_png(image: UInt8Image, palette: UInt8Image | None = None) -> bytes:
    """image: (H, W) or (H, W, 3) uint8 -> PNG bytes.

    With ``palette`` ((256, 3) uint8), a 2-D ``image`` holds palette indices and is written as an
    indexed PNG (one byte per pixel, much faster to encode than RGB).
    """
    if image.dtype != np.uint8:
        raise ValueError(f"encode_png needs uint8 pixels, got {image.dtype}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"encode_png needs (H, W) or (H, W, 3|4) pixels, got {image.shape}")
    picture = Image.fromarray(np.ascontiguousarray(image))
    if palette is not None:
        if image.ndim != 2 or palette.shape != (256, 3):
            raise ValueError("an indexed PNG needs (H, W) indices and a (256, 3) palette")
        picture = picture.convert("P")
        picture.putpalette(np.ascontiguousarray(palette, dtype=np.uint8).tobytes())
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def apply_lut(values: FloatMap, lut: UInt8Image) -> UInt8Image:
    """values: (...) float in [0, 1] (NaN shown as the lowest colour) -> (..., 3) uint8 via ``lut``
    of shape (L, 3)."""
    scaled = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0) * (len(lut) - 1)
    index = np.clip(np.rint(scaled), 0, len(lut) - 1).astype(np.intp)
    return lut[index]


def resize_rgb(image: UInt8Image, size: int) -> UInt8Image:
    """image: (H, W, 3) uint8 -> (size, size, 3) uint8, bilinear (thumbnails are photos)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def resize_map(cam: FloatMap, size: int) -> npt.NDArray[np.float32]:
    """cam: (H, W) float -> (size, size) float32, bilinear."""
    cam32 = np.asarray(cam, dtype=np.float32)
    if cam32.shape == (size, size):
        return cam32
    return np.asarray(
        Image.fromarray(cam32, mode="F").resize((size, size), Image.Resampling.BILINEAR)
    )


def gradcam_overlay(image: UInt8Image, cam: FloatMap, alpha: float = CAM_ALPHA) -> UInt8Image:
    """Blend a Grad-CAM heat map over its image.

    image: (T, T, 3) uint8 thumbnail; cam: (S, S) float16/float32 in [0, 1].
    Returns (S, S, 3) uint8 at the CAM's resolution (the finer of the two in LayerScope runs).
    Per-pixel alpha grows with the CAM, so cold regions keep the original image readable.
    """
    size = max(cam.shape[0], image.shape[0])
    base = resize_rgb(image, size).astype(np.float32)
    heat_values = np.clip(resize_map(cam, size), 0.0, 1.0)
    heat = apply_lut(heat_values, INFERNO_LUT).astype(np.float32)
    weight = (alpha * heat_values)[..., None]
    return np.clip(base * (1.0 - weight) + heat * weight, 0, 255).astype(np.uint8)


def signed_overlay(image: UInt8Image, values: FloatMap) -> UInt8Image:
    """Signed evidence over a grey copy of its image: red for the class, blue against it, the
    colour's weight growing with |value| so regions without evidence show the picture.

    image: (T, T, 3) uint8 thumbnail; values: (S, S) float in [-1, 1].
    Returns (S', S', 3) uint8 at the finer of the two resolutions.
    """
    size = max(values.shape[0], image.shape[0])
    grey = resize_rgb(image, size).astype(np.float32).mean(axis=2, keepdims=True)
    signed = np.clip(resize_map(values, size), -1.0, 1.0)
    colour = apply_lut((signed + 1.0) / 2.0, DIVERGING_LUT).astype(np.float32)
    # Dimmed grey, so white (no evidence) in the colour map never hides a light image.
    base = 0.6 * grey
    weight = np.abs(signed)[..., None]
    return np.clip(base * (1.0 - weight) + colour * weight, 0, 255).astype(np.uint8)


def explanation_png(display: str, values: np.ndarray, thumbnail: UInt8Image) -> bytes:
    """One explanation of one sample as the page shows it, PNG-encoded, by its method's
    ``Display`` value: "heat" blended over the sample's thumbnail, "signed" in red and blue over
    a grey copy of it, "picture" ((S, S, 3) uint8) as it is.

    values: (S, S) float16/float32 ("heat" in [0, 1], "signed" in [-1, 1]) or (S, S, 3) uint8;
    thumbnail: (T, T, 3) uint8.
    """
    if display == "heat":
        return encode_png(gradcam_overlay(np.asarray(thumbnail), values))
    if display == "signed":
        return encode_png(signed_overlay(np.asarray(thumbnail), values))
    if display == "picture":
        return encode_png(np.asarray(values))
    raise ValueError(f"unknown display {display!r}; expected heat, signed or picture")
