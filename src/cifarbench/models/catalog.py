"""Every model config with its parameter counts, for `cifarbench models`.

Models are built on the meta device: shapes without memory or initialisation, so listing even
VGG16 and DenseNet161 takes a moment.
"""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from cifarbench.config import config_dir, group_options
from cifarbench.models import build_model, count_parameters
from cifarbench.models.torchvision_zoo import HEADS

# What the reports say (or what their text fixes), keyed by (model, head).
REPORTED: dict[tuple[str, str | None], str] = {
    ("baseline", None): "1.07M (001 Model 1, from its layers)",
    ("student", None): "19.0M (000 Table 1)",
    ("improved", None): "5.39M (000 Table 1)",
    ("resnet50", "student_top"): "48.8M (000 Table 1)",
    ("efficientnet_b0", "student_top"): "26.1M (000 Table 1)",
    ("vgg16", "student_top"): "33.6M (000 Table 1)",
}


def count(name: str, **overrides) -> tuple[int, int]:
    cfg = OmegaConf.merge(OmegaConf.load(config_dir() / "model" / f"{name}.yaml"), overrides)
    with torch.device("meta"):
        return count_parameters(build_model(cfg))


def catalog() -> list[dict]:
    """One row per model, and per head option for the torchvision models."""
    rows = []
    for name in group_options("model"):
        is_torchvision = "arch" in OmegaConf.load(config_dir() / "model" / f"{name}.yaml")
        for head in HEADS if is_torchvision else (None,):
            options = {"head": head} if head else {}
            total, trainable = count(name, **options)
            head_only = count(name, **options, freeze="backbone")[1] if head else None
            rows.append(
                {
                    "model": name,
                    "head": head or "-",
                    "total": total,
                    "trainable": trainable,
                    "frozen_backbone_trainable": head_only,
                    "reported": REPORTED.get((name, head), ""),
                }
            )
    return rows


def format_catalog(rows: list[dict]) -> str:
    def millions(n: int | None, digits: int = 2) -> str:
        return "-" if n is None else f"{n / 1e6:.{digits}f}M"

    header = ("model", "head", "params", "trainable", "trainable (freeze=backbone)", "report")
    table = [header] + [
        (
            r["model"],
            r["head"],
            millions(r["total"]),
            millions(r["trainable"]),
            millions(r["frozen_backbone_trainable"], 3),
            r["reported"],
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
