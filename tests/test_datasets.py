"""Data sets beyond CIFAR-10: the official CIFAR-10/100 python archives, image folders of any
classes and sizes, and everything downstream reading the classes from the data.

No CIFAR-100 copy exists on these machines: the archives here are built in the official pickle
layouts (what torchvision and the CIFAR site ship) with tiny random images, and the tests run
import, train, evaluate, predict and report on them through the real CLI.
"""

from __future__ import annotations

import csv
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifarbench.data import load_data
from cifarbench.data.cache import cache_path, read_cache
from cifarbench.data.sources import CIFAR10_CLASSES, load_source
from cifarbench.errors import UserError
from conftest import cli

FINE = [f"fine{i:02d}" for i in range(100)]
COARSE = [f"coarse{i:02d}" for i in range(20)]
TINY = ["device=cpu", "progress=false", "epochs=1", "batch_size=50", "model=baseline", "augmentation=none"]


def _batch(images: np.ndarray, **labels: list[int]) -> bytes:
    # protocol 2 and latin1-decodable keys, as the official files were written (Python 2's cPickle)
    return pickle.dumps({"data": images.reshape(len(images), -1), **labels, "batch_label": "tiny"}, protocol=2)


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def cifar10_python_archive(path: Path, per_class_batch: int = 1, seed: int = 0) -> dict:
    """cifar-10-python.tar.gz's layout: cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}."""
    rng = np.random.default_rng(seed)
    made = {}
    with tarfile.open(path, "w:gz") as tar:
        for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
            labels = [c for c in range(10) for _ in range(per_class_batch)]
            images = rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
            made[name] = (images, labels)
            _add(tar, f"cifar-10-batches-py/{name}", _batch(images, labels=labels))
        _add(tar, "cifar-10-batches-py/batches.meta", pickle.dumps({"label_names": list(CIFAR10_CLASSES)}, protocol=2))
    return made


def cifar100_python_archive(path: Path, train_per_class: int = 3, test_per_class: int = 2, seed: int = 0) -> dict:
    """cifar-100-python.tar.gz's layout: cifar-100-python/{train,test,meta}, fine and coarse labels."""
    rng = np.random.default_rng(seed)
    made = {}
    with tarfile.open(path, "w:gz") as tar:
        for split, per_class in (("train", train_per_class), ("test", test_per_class)):
            fine = [c for c in range(100) for _ in range(per_class)]
            coarse = [c // 5 for c in fine]
            images = rng.integers(0, 256, (len(fine), 3, 32, 32), dtype=np.uint8)
            images[:, 0, 0, 0] = np.array(fine, dtype=np.uint8)  # each image says its class
            made[split] = (images, fine, coarse)
            _add(tar, f"cifar-100-python/{split}", _batch(images, fine_labels=fine, coarse_labels=coarse))
        meta = {"fine_label_names": FINE, "coarse_label_names": COARSE}
        _add(tar, "cifar-100-python/meta", pickle.dumps(meta, protocol=2))
    return made


def odd_folder_tree(root: Path, split: bool = True, per_class: int = 8) -> None:
    """3 classes of odd-sized JPEG and PNG images in several modes (RGB, L, RGBA, P)."""
    rng = np.random.default_rng(1)
    sizes = [(37, 29), (64, 64), (20, 50), (32, 32)]
    modes = ["RGB", "L", "RGBA", "P", "RGB", "RGB", "RGB", "RGB"]
    for c, cls in enumerate(["cats", "dogs", "owls"]):
        for i in range(per_class):
            where = root / ("train" if i < per_class - 2 else "test") / cls if split else root / cls
            where.mkdir(parents=True, exist_ok=True)
            w, h = sizes[i % len(sizes)]
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            pixels[..., 0] = 60 * c + 40  # the class is in the red channel, so a model can learn it
            image = Image.fromarray(pixels)
            mode = modes[i % len(modes)]
            image = image.convert(mode) if mode != "P" else image.quantize(16)
            suffix = ".png" if mode in ("RGBA", "P", "L") or i % 2 else ".jpg"
            image.save(where / f"{cls}_{i}{suffix}")


# --- import -------------------------------------------------------------------------------------


def test_the_official_cifar10_archive_imports_as_it_is(tmp_path: Path) -> None:
    made = cifar10_python_archive(tmp_path / "cifar-10-python.tar.gz")
    result = cli(
        "data", "import", str(tmp_path / "cifar-10-python.tar.gz"), "--root", str(tmp_path / "d"), cwd=tmp_path
    )
    assert "cifar10, 10 classes, 32x32; train: 50 images (5 per class); test: 10 images (1 per class)" in result.stdout
    raw, why = read_cache(cache_path(tmp_path / "d", "cifar10"))
    assert why == "" and raw.classes == CIFAR10_CLASSES
    first, labels = made["data_batch_1"]
    assert torch.equal(raw.splits["train"].images[:10], torch.from_numpy(first))  # pixels and order exactly
    assert raw.splits["train"].labels[:10].tolist() == labels
    assert torch.equal(raw.splits["test"].images, torch.from_numpy(made["test_batch"][0]))


def test_the_official_cifar100_archive_imports_with_both_labellings(tmp_path: Path) -> None:
    made = cifar100_python_archive(tmp_path / "cifar-100-python.tar.gz")
    result = cli(
        "data", "import", str(tmp_path / "cifar-100-python.tar.gz"), "--root", str(tmp_path / "d"), cwd=tmp_path
    )
    assert (
        "cifar100, 100 classes, 32x32; train: 300 images (3 per class); test: 200 images (2 per class)" in result.stdout
    )
    data = {"name": "cifar100", "root": str(tmp_path / "d"), "source": None, "download": False}
    fine = load_data(_cfg({**data, "labels": "fine"}))
    assert fine.classes == tuple(FINE) and fine.splits["train"].labels.tolist() == made["train"][1]
    assert torch.equal(fine.splits["test"].images, torch.from_numpy(made["test"][0]))
    coarse = load_data(_cfg({**data, "labels": "coarse"}))
    assert coarse.classes == tuple(COARSE) and coarse.splits["train"].labels.tolist() == made["train"][2]
    # the statistics are the training images' own, computed at import
    pixels = torch.from_numpy(made["train"][0]).double() / 255
    assert fine.mean == pytest.approx(pixels.mean((0, 2, 3)).tolist(), abs=1e-4)
    assert fine.std == pytest.approx(pixels.std((0, 2, 3), correction=0).tolist(), abs=1e-4)


def test_a_crafted_pickle_is_refused_not_run(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    cifar10_python_archive(archive)

    class Payload:
        def __reduce__(self):  # what a malicious batch would carry: print('pwned') when loaded
            return (print, ("pwned",))

    with tarfile.open(archive, "r:gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    members["cifar-10-batches-py/test_batch"] = pickle.dumps({"data": Payload()}, protocol=2)
    with tarfile.open(archive, "w:gz") as tar:
        for name, payload in members.items():
            _add(tar, name, payload)
    result = cli("data", "import", str(archive), "--root", str(tmp_path / "d"), cwd=tmp_path, check=False)
    assert result.returncode == 2 and "pwned" not in result.stdout
    assert (
        "test_batch is not a CIFAR python batch (UnpicklingError: refusing to load __builtin__.print)" in result.stderr
    )


@pytest.mark.parametrize("layout", ["train/test", "one tree"])
def test_an_image_folder_of_any_classes_and_sizes_imports_resized_and_converted(tmp_path: Path, layout: str) -> None:
    odd_folder_tree(tmp_path / "pets", split=layout == "train/test")
    raw = load_source(tmp_path / "pets", image_size=24, test_fraction=0.25)
    assert raw.name == "folder" and raw.classes == ("cats", "dogs", "owls")
    assert raw.splits["train"].images.shape[1:] == (3, 24, 24)
    assert raw.converted == {"L": 3, "P": 3, "RGBA": 3}  # one of each per class
    assert raw.resized == 24  # none of them is 24x24
    counts = {s: torch.bincount(raw.splits[s].labels).tolist() for s in ("train", "test")}
    assert counts == {"train": [6, 6, 6], "test": [2, 2, 2]}
    if layout == "one tree":
        again = load_source(tmp_path / "pets", image_size=24, test_fraction=0.25)
        assert torch.equal(again.splits["test"].images, raw.splits["test"].images)  # the same test images every time


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("empty class", "class folder train/bats has no images; add some or remove the folder"),
        ("not an image", "train/dogs/notes.txt is not an image"),
        ("broken image", "image train/owls/owls_1.png does not decode"),
        ("test class not in train", "test class(es) bats missing from train"),
    ],
)
def test_bad_folder_data_is_one_line_naming_it(tmp_path: Path, damage: str, message: str) -> None:
    odd_folder_tree(tmp_path / "pets")
    if damage == "empty class":
        (tmp_path / "pets" / "train" / "bats").mkdir()
    elif damage == "not an image":
        (tmp_path / "pets" / "train" / "dogs" / "notes.txt").write_text("hello")
    elif damage == "broken image":
        (tmp_path / "pets" / "train" / "owls" / "owls_1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    else:
        (tmp_path / "pets" / "test" / "bats").mkdir()
        Image.new("RGB", (32, 32)).save(tmp_path / "pets" / "test" / "bats" / "0.png")
    result = cli("data", "import", str(tmp_path / "pets"), "--root", str(tmp_path / "d"), cwd=tmp_path, check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "d").exists() or not list((tmp_path / "d").rglob("*.pt"))


def _cfg(values: dict):
    from omegaconf import OmegaConf

    return OmegaConf.create(values)


# --- end to end ---------------------------------------------------------------------------------


def test_cifar100_end_to_end_train_evaluate_predict_report(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-100-python.tar.gz"
    made = cifar100_python_archive(archive)
    env = {"CIFARBENCH_DATA": str(tmp_path / "d")}
    overrides = ["data=cifar100", f"data.source={archive}", "data.val_size=100", *TINY, "name=c100"]
    cli("train", *overrides, "hydra.run.dir=runs/c100", cwd=tmp_path, env=env)
    run = tmp_path / "runs" / "c100"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data"]["name"] == "cifar100" and metrics["data"]["classes"] == FINE
    assert metrics["data_sizes"] == {"train": 200, "val": 100, "test": 200}
    assert (
        0 <= metrics["test"]["top5_accuracy"] <= 100 and metrics["test"]["top5_accuracy"] >= metrics["test"]["accuracy"]
    )
    assert len(metrics["test"]["per_class"]) == 100
    with (run / "confusion_matrix.csv").open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0][1:] == FINE and len(rows) == 101  # 100 x 100, named by the data's classes

    evaluated = cli("evaluate", str(run), cwd=tmp_path, env=env).stdout
    assert "(identical)" in evaluated

    image = tmp_path / "one.png"
    Image.fromarray(made["test"][0][0].transpose(1, 2, 0)).save(image)
    predicted = cli("predict", str(run), str(image), "--output", str(tmp_path / "p.csv"), cwd=tmp_path, env=env).stdout
    assert any(name in predicted for name in FINE) and not any(name in predicted for name in CIFAR10_CLASSES)

    cli("report", "runs", "--out", "report", cwd=tmp_path, env=env)
    with (tmp_path / "report" / "report.csv").open() as fh:
        report = list(csv.DictReader(fh))
    assert report[0]["Data set"] == "cifar100" and float(report[0]["Top-5 accuracy (%)"]) == pytest.approx(
        metrics["test"]["top5_accuracy"], abs=0.01
    )


def test_coarse_labels_train_a_20_way_model(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-100-python.tar.gz"
    cifar100_python_archive(archive)
    env = {"CIFARBENCH_DATA": str(tmp_path / "d")}
    overrides = ["data=cifar100", "data.labels=coarse", f"data.source={archive}", "data.val_size=40", *TINY]
    cli("train", *overrides, "hydra.run.dir=run", cwd=tmp_path, env=env)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["data"]["classes"] == COARSE and len(metrics["test"]["per_class"]) == 20


def test_a_folder_data_set_trains_at_its_own_size_and_the_fixed_size_models_refuse_it(tmp_path: Path) -> None:
    odd_folder_tree(tmp_path / "pets", split=False, per_class=20)
    common = ["data=folder", f"data.source={tmp_path / 'pets'}", "data.image_size=40", "data.val_size=0.2", *TINY]
    env = {"CIFARBENCH_DATA": str(tmp_path / "d")}
    refused = cli("train", *common, cwd=tmp_path, env=env, check=False)
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr
    assert "BaselineCNN is built for 32x32 images, not data.image_size=40" in lines[0]
    assert not (tmp_path / "outputs").exists()  # nothing left behind

    cli(
        "train",
        *common,
        "model=improved",
        "model.widths=[8,16]",
        "model.dense=16",
        "hydra.run.dir=run",
        cwd=tmp_path,
        env=env,
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["data"]["classes"] == ["cats", "dogs", "owls"] and metrics["data"]["image_size"] == 40
    assert "shorter side to 40" in metrics["data"]["resize"]
    # per class: 0.2 of 20 images tested (4); of the 16 left, 0.2 validates (3, rounded down), 13 train
    assert metrics["data_sizes"] == {"train": 39, "val": 9, "test": 12}
    assert "top5_accuracy" not in metrics["test"]  # 3 classes: top-5 says nothing
    image = tmp_path / "pets" / "owls" / "owls_3.png"
    predicted = cli("predict", str(tmp_path / "run"), str(image), "--output", "p.csv", cwd=tmp_path, env=env).stdout
    assert "owls" in predicted and "cats" in predicted and "dogs" in predicted  # all three ranked, nothing else
    assert "(identical)" in cli("evaluate", str(tmp_path / "run"), cwd=tmp_path, env=env).stdout
    cli("report", "run", "--out", "report", cwd=tmp_path, env=env)
    assert "| folder:pets |" in (tmp_path / "report" / "report.md").read_text()


def test_a_report_preset_refuses_another_data_set(tmp_path: Path) -> None:
    result = cli("train", "experiment=r004_kerascnn", "data=cifar100", cwd=tmp_path, check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1
    assert "data=cifar100 is refused with r004_kerascnn: it reproduces a report on cifar10" in lines[0]


def test_a_run_from_before_the_data_record_reads_as_cifar10(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    cifar10_python_archive(archive, per_class_batch=4)
    env = {"CIFARBENCH_DATA": str(tmp_path / "d")}
    cli("train", f"data.source={archive}", "data.val_size=40", *TINY, "hydra.run.dir=run", cwd=tmp_path, env=env)
    run = tmp_path / "run"
    for name in ("last.pt", "best.pt"):  # as written before: no `data` entry, num_classes in the model config
        checkpoint = torch.load(run / "checkpoints" / name, weights_only=False)
        checkpoint.pop("data")
        checkpoint["config"]["model"]["num_classes"] = 10
        torch.save(checkpoint, run / "checkpoints" / name)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("data")
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert "(identical)" in cli("evaluate", str(run), cwd=tmp_path, env=env).stdout
    cli("report", "run", "--out", "report", cwd=tmp_path, env=env)
    assert "| cifar10 |" in (tmp_path / "report" / "report.md").read_text()


def test_the_same_folder_imports_again_when_its_files_change(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    odd_folder_tree(tmp_path / "pets")
    data = _cfg({"name": "folder", "root": str(tmp_path / "d"), "source": str(tmp_path / "pets"), "image_size": 32,
                 "test_fraction": 0.2, "labels": "fine"})  # fmt: skip
    first = load_data(data)
    (tmp_path / "pets" / "train" / "cats" / "cats_0.jpg").unlink()
    second = load_data(data)
    assert len(second.splits["train"].labels) == len(first.splits["train"].labels) - 1
    assert "changed since it was imported" in caplog.text


def test_sizes_that_cannot_be_class_balanced_are_refused_for_the_data_they_are_for(tmp_path: Path) -> None:
    result = cli("train", "data=cifar100", "data.val_size=150", cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert (
        "data.val_size=150 is not allowed: data.val_size must be an integer >= 0 and a multiple of 100" in result.stderr
    )
    with pytest.raises(UserError, match=r"data=folder needs data\.source=PATH"):
        from cifarbench.config_check import check_dataset

        check_dataset(_cfg({"data": {"name": "folder", "source": None}}))


@pytest.mark.parametrize("preset", ["fast", "modern_recipe", "best_improved"])
def test_the_general_presets_run_on_any_data(tmp_path: Path, preset: str) -> None:
    odd_folder_tree(tmp_path / "pets", split=False, per_class=20)
    env = {"CIFARBENCH_DATA": str(tmp_path / "d")}
    overrides = [f"experiment={preset}", "data=folder", f"data.source={tmp_path / 'pets'}", "data.val_size=0.2"]
    tiny = ["device=cpu", "progress=false", "epochs=1", "batch_size=13", "tta=none", "hydra.run.dir=run"]
    cli("train", *overrides, *tiny, cwd=tmp_path, env=env)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["data"]["classes"] == ["cats", "dogs", "owls"] and len(metrics["test"]["per_class"]) == 3


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_torchvision_download_fills_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Online, torchvision's download: here a stand-in for torchvision's class that writes the
    official files where torchvision would, then reads them as torchvision does."""
    import torchvision.datasets as tv

    archive = tmp_path / f"{name}.tar.gz"
    made = (cifar10_python_archive if name == "cifar10" else cifar100_python_archive)(archive)
    real = {"cifar10": tv.CIFAR10, "cifar100": tv.CIFAR100}[name]

    class Downloaded(real):
        def __init__(self, root: str, train: bool, download: bool) -> None:
            assert download
            with tarfile.open(archive) as tar:
                tar.extractall(root, filter="data")
            super().__init__(root, train=train, download=False)

    monkeypatch.setattr(tv, real.__name__, Downloaded)
    monkeypatch.setattr(tv.cifar, "check_integrity", lambda *args: True)  # the stand-in files are not the md5s
    raw = load_data(
        _cfg({"name": name, "root": str(tmp_path / "d"), "source": None, "download": True, "labels": "fine"})
    )
    assert read_cache(cache_path(tmp_path / "d", name))[1] == ""  # cached for the next run
    first = made["data_batch_1"][0] if name == "cifar10" else made["train"][0]
    assert torch.equal(raw.splits["train"].images[: len(first)], torch.from_numpy(first))
    if name == "cifar100":
        assert raw.coarse_classes == tuple(COARSE)
