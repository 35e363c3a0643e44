"""Import, validation, cache, subsets, splits and normalisation, on tiny data made here."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from cifarbench.data import CIFAR10, Normalize, import_data, make_splits
from cifarbench.data.cache import cache_path, read_cache
from cifarbench.data.sources import CIFAR10_CLASSES, RawSplit, load_source
from cifarbench.errors import UserError


def make_image_folder(root: Path, per_class: dict[str, int], size=(32, 32), mode="RGB") -> dict:
    """train/<class>/<i>.png with a distinct colour per image; returns the expected pixels by path."""
    expected = {}
    for split, count in per_class.items():
        for label, cls in enumerate(CIFAR10_CLASSES):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                colour = (label * 20, i * 7 % 256, 200 if split == "test" else 50)
                Image.new(mode, size, colour[: len(mode)] if mode != "L" else colour[0]).save(folder / f"{i:04d}.png")
                expected[f"{split}/{cls}/{i:04d}"] = colour
    return expected


def tar_folder(folder: Path, archive: Path, top: str = "cifar10-tiny") -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=top)
    return archive


@pytest.fixture
def tiny_tree(tmp_path: Path) -> Path:
    make_image_folder(tmp_path / "tree", {"train": 3, "test": 2})
    return tmp_path / "tree"


def check_tiny(splits: dict[str, RawSplit]) -> None:
    assert splits["train"].images.shape == (30, 3, 32, 32)
    assert splits["train"].images.dtype == torch.uint8
    assert splits["test"].images.shape == (20, 3, 32, 32)
    # label order is CIFAR-10's: class folder sorted by name -> 0..9, images sorted within a class
    assert splits["train"].labels.tolist() == [c for c in range(10) for _ in range(3)]
    # pixels survive exactly (PNG is lossless): image 2 of 'cat' (label 3) in train
    pixel = splits["train"].images[3 * 3 + 2, :, 0, 0].tolist()
    assert pixel == [3 * 20, 14, 50]


@pytest.mark.parametrize("kind", ["folder", "tar.gz", "zip"])
def test_import_each_layout(tiny_tree: Path, tmp_path: Path, kind: str) -> None:
    if kind == "folder":
        source = tiny_tree
    elif kind == "tar.gz":
        source = tar_folder(tiny_tree, tmp_path / "tiny.tar.gz")
    else:
        source = tmp_path / "tiny.zip"
        with zipfile.ZipFile(source, "w") as zf:
            for file in tiny_tree.rglob("*.png"):
                zf.write(file, file.relative_to(tiny_tree).as_posix())
    check_tiny(load_source(source).splits)


def test_import_writes_a_cache_that_loads_back(tiny_tree: Path, tmp_path: Path) -> None:
    path, summary = import_data(tiny_tree, tmp_path / "root")
    assert path == cache_path(tmp_path / "root")
    assert "train: 30 images (3 per class)" in summary
    raw, why = read_cache(path)
    assert why == "" and raw.name == "cifar10" and raw.classes == CIFAR10_CLASSES
    check_tiny(raw.splits)


def test_corrupt_cache_is_detected_not_trusted(tiny_tree: Path, tmp_path: Path) -> None:
    path, _ = import_data(tiny_tree, tmp_path / "root")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip a byte in the middle of the tensors
    path.write_bytes(bytes(data))
    raw, why = read_cache(path)
    assert raw is None and "corrupt" in why
    path.write_bytes(b"not a checkpoint")
    assert read_cache(path)[0] is None


def test_missing_class_is_named(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "tree", {"train": 1, "test": 1})
    for file in (tmp_path / "tree" / "test" / "frog").iterdir():
        file.unlink()
    (tmp_path / "tree" / "test" / "frog").rmdir()
    with pytest.raises(UserError, match=r"split 'test' has 9 class folders.*missing: \['frog'\]"):
        load_source(tmp_path / "tree")


def test_wrong_size_image_is_named(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "tree", {"train": 1, "test": 1})
    Image.new("RGB", (28, 28)).save(tmp_path / "tree" / "train" / "cat" / "0000.png")
    with pytest.raises(UserError, match=r"train/cat/0000.png is 28x28 RGB; CIFAR-10 images must be 32x32 RGB"):
        load_source(tmp_path / "tree")


def test_truncated_archive_is_reported(tiny_tree: Path, tmp_path: Path) -> None:
    archive = tar_folder(tiny_tree, tmp_path / "tiny.tar.gz")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_source(archive)


def synthetic_raw(per_class_train: int = 50, per_class_test: int = 20) -> dict[str, RawSplit]:
    def split(per_class: int) -> RawSplit:
        labels = torch.arange(10).repeat_interleave(per_class)
        images = torch.randint(0, 256, (len(labels), 3, 32, 32), dtype=torch.uint8)
        images[:, 0, 0, 0] = torch.arange(len(labels)) % 256  # traceable identity
        return RawSplit(images, labels)

    return {"train": split(per_class_train), "test": split(per_class_test)}


def test_subsets_are_class_balanced_and_disjoint_from_val() -> None:
    raw = synthetic_raw()
    splits = make_splits(
        raw, CIFAR10, val_size=100, train_subset=200, test_subset=50, seed=0, device=torch.device("cpu")
    )
    assert torch.bincount(splits.val.labels, minlength=10).tolist() == [10] * 10
    assert torch.bincount(splits.train.labels, minlength=10).tolist() == [20] * 10
    assert torch.bincount(splits.test.labels, minlength=10).tolist() == [5] * 10
    train_ids = {bytes(img.numpy()) for img in splits.train.images}
    val_ids = {bytes(img.numpy()) for img in splits.val.images}
    assert not train_ids & val_ids
    assert not splits.val_is_test


def test_split_is_fixed_by_seed() -> None:
    raw = synthetic_raw()
    cpu = torch.device("cpu")
    a = make_splits(raw, CIFAR10, 100, None, None, seed=1, device=cpu)
    b = make_splits(raw, CIFAR10, 100, None, None, seed=1, device=cpu)
    c = make_splits(raw, CIFAR10, 100, None, None, seed=2, device=cpu)
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.val.images, c.val.images)
    assert len(a.train) == 400  # the validation images left the training set


def test_val_size_zero_validates_on_test() -> None:
    splits = make_splits(synthetic_raw(), CIFAR10, 0, None, None, seed=0, device=torch.device("cpu"))
    assert splits.val_is_test and splits.val is splits.test and len(splits.train) == 500


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_size": 105}, "data.val_size=105 cannot be class-balanced"),
        ({"val_size": 500}, r"data.val_size=500 must be in \[0, 500\)"),
        ({"train_subset": 1000}, "data.train_subset=1000 needs 100 images per class"),
    ],
)
def test_impossible_sizes_are_refused(kwargs: dict, message: str) -> None:
    args = {"val_size": 100, "train_subset": None, "test_subset": None, **kwargs}
    with pytest.raises(UserError, match=message):
        make_splits(synthetic_raw(), CIFAR10, seed=0, device=torch.device("cpu"), **args)


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("half", -1.0, 1.0), ("unit", 0.0, 1.0), ("cifar10", -0.4914 / 0.2470, (1 - 0.4822) / 0.2435)],
)
def test_normalisation_ranges(name: str, low: float, high: float) -> None:
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    images[1] = 255
    out = Normalize(name, torch.device("cpu"))(images)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    assert out.min().item() == pytest.approx(low, abs=1e-5)
    assert out.max().item() == pytest.approx(high, abs=1e-5)


def test_cifar10_normalisation_is_per_channel() -> None:
    images = torch.full((1, 3, 1, 1), 128, dtype=torch.uint8)
    out = Normalize("cifar10", torch.device("cpu"), channels_last=False)(images).flatten()
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    assert torch.allclose(out, (128 / 255 - mean) / std, atol=1e-5)


def test_unknown_normalisation_lists_choices() -> None:
    with pytest.raises(UserError, match="choose one of cifar10, dataset, half, unit"):
        Normalize("imagenet", torch.device("cpu"))


def test_each_list_of_allowed_values_matches_what_its_module_does() -> None:
    """options.py is the one home of every list; the tables that give the values their meaning agree."""
    from cifarbench import options
    from cifarbench.data.normalize import MEAN_STD

    assert tuple(MEAN_STD) == options.NORMALIZATIONS
    from cifarbench.augmentation import TorchvisionPolicy, tta_views

    for policy in options.POLICIES:
        TorchvisionPolicy(policy)
    images = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    assert [len(tta_views(images, level)) for level in options.TTA_LEVELS] == [1, 2, 6]


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_the_loader_counts_the_batches_it_yields(world_size: int) -> None:
    """Schedules and lookahead are sized by len(batches): it must be what an epoch really yields."""
    from cifarbench.augmentation import NoAugmentation
    from cifarbench.data import Batches, Split
    from cifarbench.distributed import World

    normalize = Normalize("unit", torch.device("cpu"), channels_last=False)
    for n in range(40):
        for batch_size in range(world_size, 13, world_size):
            split = Split(torch.zeros(n, 3, 32, 32, dtype=torch.uint8), torch.zeros(n, dtype=torch.int64))
            batches = Batches(split, batch_size, NoAugmentation(), normalize, torch.Generator(), torch.Generator(),
                              World(0, world_size, 0))  # fmt: skip
            assert len(batches) == sum(1 for _ in batches), (n, batch_size)
