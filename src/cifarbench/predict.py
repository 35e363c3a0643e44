"""`cifarbench predict`: class probabilities for a user's own images, as a CSV and a printout.

Images are read and resized here as `data import` resized the run's data (images.fit_image). A run
directory is run by torch (inference.predict_run); an exported ONNX file (`--onnx`) by onnxruntime
with numpy and Pillow alone, as another program would run it: nothing here imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from cifarbench.errors import UserError, import_extra
from cifarbench.files import write_csv
from cifarbench.images import fit_image


def read_image(path: Path, size: int) -> np.ndarray:
    """Any PNG/JPEG, any size -> uint8 (3, size, size)."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
            rgb = rgb if rgb.size == (size, size) else fit_image(rgb, size)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read this image ({exc})") from None
    return np.asarray(rgb).transpose(2, 0, 1)


def top_classes(
    images: list[Path], probabilities: np.ndarray, classes: tuple[str, ...] | list[str], output: Path, top: int = 3
) -> list[dict]:
    """The `top` classes of each image with their probabilities, also written to `output` (CSV)."""
    top = min(top, len(classes))
    results = []
    for path, probs in zip(images, probabilities, strict=True):
        order = np.argsort(-probs, kind="stable")[:top]
        results.append({"image": str(path), "top": [(classes[i], float(probs[i])) for i in order]})
    headers = ["image", *(f"{kind}{k}" for k in range(1, top + 1) for kind in ("class", "prob"))]
    rows = [[r["image"], *(x for pair in r["top"] for x in (pair[0], f"{pair[1]:.4f}"))] for r in results]
    write_csv(output, headers, rows)
    return results


def predict_onnx(model_path: Path, images: list[Path], output: Path, top: int = 3) -> list[dict]:
    """An exported model (`cifarbench export`), its class names and input size from its own metadata."""
    if not images:
        raise UserError("no images given; usage: cifarbench predict --onnx MODEL.onnx IMAGE [IMAGE ...]")
    ort = import_extra("onnxruntime", "export", "cifarbench predict --onnx")
    try:
        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors for a missing, truncated or foreign file
        raise UserError(f"{model_path}: not an ONNX model onnxruntime can load ({str(exc)[:160]})") from None
    described = session.get_modelmeta().custom_metadata_map.get("cifarbench")
    if described is None:
        raise UserError(f"{model_path} was not written by `cifarbench export`: its classes and input size are unknown")
    info = json.loads(described)
    size = info["input"]["height"]
    batch = np.stack([read_image(path, size) for path in images]).astype(np.float32) / 255.0
    logits = session.run(["logits"], {"images": batch})[0].astype(np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return top_classes(images, exp / exp.sum(axis=1, keepdims=True), info["classes"], output, top)
