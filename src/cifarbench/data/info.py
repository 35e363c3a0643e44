"""What a run knows of its data beyond the pixels: the classes, the statistics, the image size.

It goes into every checkpoint and metrics.json (`data`), so that evaluate, predict, report and
export rebuild a run from its directory alone. Runs written before there were other data sets
have none, and read as CIFAR-10.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cifarbench.data.sources import CIFAR10_CLASSES, RawData
from cifarbench.images import RESIZE

CIFAR10_MEAN_STD = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


@dataclass(frozen=True)
class DataInfo:
    name: str  # cifar10 | cifar100 | folder
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # the training images' per-channel mean and std, [0, 1] scale
    std: tuple[float, ...]
    image_size: int = 32
    labels: str = "fine"  # cifar100: fine (100 classes) | coarse (20 superclasses)
    source: str = ""
    resize: str | None = None  # what import did to images of another size, if any were

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def of(cls, raw: RawData, labels: str = "fine") -> DataInfo:
        resize = None
        if raw.resized:
            resize = f"{raw.resized} images: {RESIZE.format(size=raw.image_size)}"
        assert raw.mean is not None and raw.std is not None  # the cache computed them
        return cls(raw.name, raw.classes, raw.mean, raw.std, raw.image_size, labels, raw.source, resize)

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "classes": list(self.classes), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_record(cls, record: dict[str, Any] | None) -> DataInfo:
        """A run's data; None (a run from before the `data` record) is CIFAR-10."""
        if not record:
            return CIFAR10
        fields = {**record, "classes": tuple(record["classes"])}
        fields["mean"], fields["std"] = tuple(record["mean"]), tuple(record["std"])
        return cls(**fields)


CIFAR10 = DataInfo("cifar10", CIFAR10_CLASSES, *CIFAR10_MEAN_STD)
