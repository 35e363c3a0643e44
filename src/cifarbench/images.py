"""The one resize cifarbench does to images (Pillow only: `predict --onnx` runs without torch)."""

from __future__ import annotations

from PIL import Image

RESIZE = "shorter side to {size} (bilinear, antialiased), centre crop {size}x{size}"


def fit_image(image: Image.Image, size: int) -> Image.Image:
    """Any image to size x size: its shorter side scaled to `size`, then the centre cut out. The
    one resize cifarbench does, at import and in `predict`, so that both see images alike."""
    width, height = image.size
    scale = size / min(width, height)
    scaled = (max(size, round(width * scale)), max(size, round(height * scale)))
    image = image.resize(scaled, Image.Resampling.BILINEAR, reducing_gap=None)  # Pillow antialiases when shrinking
    left, top = (scaled[0] - size) // 2, (scaled[1] - size) // 2
    return image.crop((left, top, left + size, top + size))
