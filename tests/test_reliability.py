"""Bad input gets one clear line and exit 2; interrupted, killed and diverged runs lose nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from cifarbench.data import load_data
from cifarbench.data.cache import cache_path, read_cache
from cifarbench.data.sources import describe, load_source
from cifarbench.errors import UserError
from conftest import SMOKE, cli
from test_data import make_image_folder, tar_folder

# (overrides, what the one line must say)
BAD_CONFIGS = [
    (["epochs=0"], "epochs=0 is not allowed: epochs must be a number > 0 (7.5: seven epochs and half of an eighth)"),
    (["epochs=-0.5"], "epochs=-0.5 is not allowed: epochs must be a number > 0"),
    (["epochs=inf"], "epochs=inf is not allowed: epochs must be a number > 0"),
    (["epochs=abc"], "epochs='abc' is not allowed"),
    (["batch_size=0"], "batch_size=0 is not allowed: batch_size must be an integer >= 1"),
    (["model.dropout=1.0"], "model.dropout=1.0 is not allowed: model.dropout must be a number in [0, 1)"),
    (["model.dropout=-0.1"], "model.dropout=-0.1 is not allowed"),
    (["optimizer.lr=0"], "optimizer.lr=0 is not allowed: optimizer.lr must be a number > 0"),
    (["optimizer.lr=-1e-3"], "optimizer.lr=-0.001 is not allowed"),
    (["model=resnet19"], "model=resnet19 is not known; choose one of: baseline, cnn3, densenet121"),
    (["optimizer=adamm"], "optimizer=adamm is not known; choose one of: adam, adamax, adamw, muon, rmsprop, sgd"),
    (["validate_every=-1"], "validate_every=-1 is not allowed: validate_every must be null or an integer >= 0"),
    (["validate_every=0"], "validate_every=0 is refused with test_weights=best: no epoch is validated"),
    (["validate_every=null", "early_stopping.enabled=true"], "validate_every=null is refused with early_stopping"),
    (["validate_every=2", "scheduler=plateau"], "validate_every=2 is refused with scheduler=plateau"),
    (["scheduler=linear"], "scheduler=linear is not known; choose one of: cosine, none, onecycle, plateau, step"),
    (["augmentation=flip"], "augmentation=flip is not known; choose one of: autoaugment, cutout, flipcrop"),
    (["experiment=nope"], "experiment=nope is not known; choose one of: best_improved"),
    (["epochs2=3"], "Could not override 'epochs2'. Unknown key; to add a new key use +epochs2=3"),
    (
        ["data.val_size=55"],
        "data.val_size=55 is not allowed: data.val_size must be an integer >= 0 and a multiple of 10 (class-balanced",
    ),
    (["data.train_subset=15"], "data.train_subset=15 is not allowed"),
    (["device=gpu"], "device='gpu' is not allowed: device must be one of auto, cpu, cuda, mps"),
    (["tta=mirror"], "tta='mirror' is not allowed: tta must be one of none, flip, flip_translate"),
    (["augmentation=translate", "augmentation.flip=sometimes"], "augmentation.flip='sometimes' is not allowed"),
    (["lookahead_every=0"], "lookahead_every=0 is not allowed: lookahead_every must be null or an integer >= 1"),
    (["+epochz=5"], "+epochz=5: epochz is not a key of the config (the nearest known key is epochs)"),
    (["++label_smoothin=0.1"], "label_smoothin is not a key of the config (the nearest known key is label_smoothing)"),
    (["+optimizer.amsgrd=true"], "optimizer.amsgrd is not a key of the config (the nearest known key is optimizer.ams"),
    (["-m", "model.dropout=0.3,abc"], "sweep job model.dropout=abc: model.dropout='abc' is not allowed"),
    (["-m", "epochs=1,2", "batch_size=64,0"], "sweep job epochs=1 batch_size=0: batch_size=0 is not allowed"),
    (["data.val_size=0"], "test_weights=best is refused: with data.val_size=0 the validation set is the test set"),
    (["data.val_size=0", "test_weights=last", "early_stopping.enabled=true"], "early_stopping.enabled=true is refused"),
    (["data.val_size=0", "test_weights=last", "scheduler=plateau"], "scheduler=plateau is refused"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_CONFIGS, ids=lambda v: str(v)[:40])
def test_bad_config_is_one_line_and_status_2(tmp_path: Path, overrides: list[str], message: str) -> None:
    result = cli("train", *overrides, cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert lines[0].startswith("cifarbench: error: ")
    assert not (tmp_path / "outputs").exists()  # no half-written run directory


@pytest.mark.parametrize("overrides", [["optimizer.lr=0"], ["-m", "search=r004_table2", "data.val_size=0"]])
def test_a_bad_config_is_refused_before_torch_is_imported(tmp_path: Path, overrides: list[str]) -> None:
    # A mistyped command line should fail in a second, not after the seconds torch, matplotlib and
    # scikit-learn take to import: here they cannot be imported at all.
    for name in ("torch", "matplotlib", "sklearn"):
        (tmp_path / "blocked" / name).mkdir(parents=True)
        (tmp_path / "blocked" / name / "__init__.py").write_text(f"raise ImportError('{name} imported')\n")
    result = cli("train", *overrides, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "blocked")}, check=False)
    assert result.returncode == 2 and "imported" not in result.stderr, result.stderr
    assert result.stderr.startswith("cifarbench: error: ")


def test_the_refusal_of_test_selected_weights_names_both_ways_out(tmp_path: Path) -> None:
    result = cli("train", "data.val_size=0", cwd=tmp_path, check=False)
    assert "use test_weights=last (the final weights), or set data.val_size=N" in result.stderr


def test_keys_that_a_target_accepts_may_be_added_and_searches_pass_the_check() -> None:
    from cifarbench.config_check import check_overrides

    check_overrides(["+optimizer.amsgrad=true", "++scheduler.interval=epoch", "++epochs=2"])
    check_overrides(["-m", "~optimizer.betas", "seed=0,1"])  # a deletion stands for itself in every job
    check_overrides(["-m", "model.dropout=interval(0,0.6)", "optimizer.lr=tag(log,interval(1e-4,1e-2))",
                     "batch_size=choice(64,128)"])  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.val_size=50000"], "data.val_size=50000 must be in [0, 50000)"),
        (["data.train_subset=46000"], "data.train_subset=46000 needs 4600 images per class"),
        (["device=cuda"], "device=cuda but CUDA is not available here"),
        (["model=resnet18", "model.head=middle"], "model.head='middle' is not known; choose one of replace, append"),
        (["model=resnet18", "model.weights=/no/such.pth"], "model.weights=/no/such.pth: file not found"),
        (
            ["model=resnet18", "model.freeze=backbone", "optimizer=muon"],
            "optimizer=muon found no trainable weight matrix besides the output layer",
        ),
    ],
    ids=["val_size", "train_subset", "cuda", "head", "weights", "muon_frozen"],
)
def test_problems_found_after_loading_are_one_line_too(
    tmp_path: Path, run_env: dict, overrides: list[str], message: str
) -> None:
    result = cli("train", "progress=false", *overrides, cwd=tmp_path, env=run_env, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not list((tmp_path / "outputs").rglob("*.yaml"))  # the started run directory was removed


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["scheduler=step", "scheduler.step_size=0"],
            "scheduler.step_size=0 is refused: StepLR raises ZeroDivisionError",
        ),
        (["scheduler=cosine", "scheduler.eta_min=-1"], "scheduler.eta_min=-1 is refused: the learning rate becomes -"),
        (
            ["optimizer=adam", "optimizer.betas=[1.5,0.9]"],
            "optimizer.betas=[1.5, 0.9] is refused: Adam raises ValueError",
        ),
        (
            ["scheduler=onecycle", "scheduler.pct_start=2"],
            "scheduler.pct_start=2 is refused: OneCycleLR raises ValueError",
        ),
        (
            ["scheduler=plateau", "scheduler.factor=2"],
            "scheduler.factor=2 is refused: ReduceLROnPlateau raises ValueError",
        ),
        (["model=kerascnn", "model.dense=-5"], "model (cifarbench.models.kerascnn.KerasCNN) cannot be built with"),
        (["augmentation=translate", "augmentation.padding=-2"], "augmentation.padding=-2 is refused: it fails on a"),
        (["model=kerascnn", "model.widths=[32,0,128]"], "model.widths=[32, 0, 128] is refused: it fails on a batch"),
        (["model=kerascnn", "+model.num_classes=5"], "model.num_classes=5 does not match the data's 10 classes"),
    ],
    ids=["step_size", "eta_min", "betas", "pct_start", "plateau_factor", "model_target", "padding", "width", "classes"],
)
def test_values_torch_would_refuse_late_are_refused_before_the_first_batch(
    tmp_path: Path, run_env: dict, overrides: list[str], message: str
) -> None:
    """Values that only torch checks (or never does: a negative learning rate) end as one line naming
    the key and the value, before any training: no epoch is lost to them and no run is left behind."""
    result = cli("train", "progress=false", "epochs=2", *overrides, cwd=tmp_path, env=run_env, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not list((tmp_path / "outputs").rglob("history.csv"))  # refused before the first epoch
    assert not list((tmp_path / "outputs").rglob("*.yaml"))


# --- data faults -------------------------------------------------------------------------------


def test_image_that_does_not_decode_is_named(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "tree", {"train": 1, "test": 1})
    (tmp_path / "tree" / "test" / "dog" / "0000.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UserError, match=r"image test/dog/0000.png does not decode"):
        load_source(tmp_path / "tree")


def test_grayscale_and_palette_images_are_converted_and_counted(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "tree", {"train": 1, "test": 1})
    Image.new("L", (32, 32), 77).save(tmp_path / "tree" / "train" / "ship" / "0000.png")
    Image.new("P", (32, 32)).save(tmp_path / "tree" / "test" / "cat" / "0000.png")
    raw = load_source(tmp_path / "tree")
    assert raw.converted == {"L": 1, "P": 1}
    assert raw.splits["train"].images[8].unique().tolist() == [77]  # grey 77 in each of R, G and B
    assert "converted to RGB: 1 L, 1 P" in describe(raw)


def test_missing_split_is_named(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "tree", {"train": 1})
    archive = tar_folder(tmp_path / "tree", tmp_path / "no_test.tar.gz")
    with pytest.raises(UserError, match=r"no 'test/<class>/<image>' files found"):
        load_source(archive)


def test_eleven_classes_is_a_class_count_mismatch(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "tree", {"train": 1, "test": 1})
    (tmp_path / "tree" / "train" / "zebra").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "tree" / "train" / "zebra" / "0.png")
    with pytest.raises(UserError, match=r"split 'train' has 11 class folders.*unexpected: \['zebra'\]"):
        load_source(tmp_path / "tree", "cifar10")
    assert load_source(tmp_path / "tree").name == "folder"  # not CIFAR-10: a data set of its own


def test_corrupt_archive_through_the_cli(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "tree", {"train": 1, "test": 1})
    archive = tar_folder(tmp_path / "tree", tmp_path / "c.tar.gz")
    data = bytearray(archive.read_bytes())
    for at in (len(data) // 3, len(data) // 2, 2 * len(data) // 3):  # garble the compressed stream
        data[at : at + 64] = b"\0" * 64
    archive.write_bytes(bytes(data))
    result = cli("data", "import", str(archive), "--root", str(tmp_path / "root"), cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{archive}: archive is truncated or corrupt" in result.stderr
    assert not cache_path(tmp_path / "root").exists()


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "stale format"])
def test_corrupt_or_stale_cache_is_rebuilt_not_trusted(tmp_path: Path, damage: str, caplog) -> None:
    import torch

    make_image_folder(tmp_path / "tree", {"train": 2, "test": 1})
    root = tmp_path / "root"
    data_cfg = OmegaConf.create({"root": str(root), "source": str(tmp_path / "tree"), "download": False})
    good = load_data(data_cfg).splits["train"].images.clone()  # the cache is memory-mapped: copy before damaging it
    path = cache_path(root)
    if damage == "flip a byte":
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    else:
        payload = torch.load(path, weights_only=True)
        payload["format"] = 0
        torch.save(payload, path)
    assert read_cache(path)[0] is None
    rebuilt = load_data(data_cfg).splits
    assert "data cache unusable" in caplog.text and "rebuilding it" in caplog.text
    assert torch.equal(rebuilt["train"].images, good)
    assert read_cache(path)[0] is not None


# --- interruptions, resume, determinism --------------------------------------------------------

RUN = [*SMOKE, "data.train_subset=1000", "epochs=4", "deterministic=true", "name=det"]
COMPARED = ("train", "val", "test", "epochs_run", "best_epoch", "params")


def numbers(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed", metrics
    return {key: metrics[key] for key in COMPARED}


def run_dir_of(root: Path) -> Path:
    (path,) = (root / "outputs" / "det").iterdir()
    return path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> dict:
    cwd = tmp_path_factory.mktemp("uninterrupted")
    cli("train", *RUN, cwd=cwd, env={"CIFARBENCH_DATA": str(data_root)})
    return numbers(run_dir_of(cwd))


def test_two_runs_with_the_same_seed_agree_exactly(uninterrupted: dict, tmp_path: Path, run_env: dict) -> None:
    cli("train", *RUN, cwd=tmp_path, env=run_env)
    assert numbers(run_dir_of(tmp_path)) == uninterrupted


def start_and_signal(tmp_path: Path, run_env: dict, sig: signal.Signals) -> tuple[subprocess.Popen, Path]:
    """Starts the run and sends `sig` once its first epoch is on disk."""
    proc = subprocess.Popen(["cifarbench", "train", *RUN], cwd=tmp_path, env={**os.environ, **run_env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list((tmp_path / "outputs").rglob("history.csv")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the first epoch never finished"
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=300)
    return proc, run_dir_of(tmp_path)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_interrupted_run_resumes_to_the_same_numbers(
    uninterrupted: dict, tmp_path: Path, run_env: dict, sig: signal.Signals
) -> None:
    proc, run = start_and_signal(tmp_path, run_env, sig)
    stderr = proc.stderr.read()
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        assert not (run / "metrics.json").exists()
    else:
        assert proc.returncode == 128 + sig, stderr
        assert "Traceback" not in stderr
        assert f"resume with: cifarbench train resume={run}" in stderr
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["status"] == "interrupted" and metrics["resume"] == f"cifarbench train resume={run}"
    assert (run / "checkpoints" / "last.pt").is_file()
    done = len((run / "history.csv").read_text().strip().splitlines()) - 1  # epochs on disk
    assert 1 <= done < 4
    overrides_before = (run / ".hydra" / "overrides.yaml").read_text()

    cli("train", f"resume={run}", "progress=false", cwd=tmp_path, env=run_env)
    assert numbers(run) == uninterrupted
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["resumed"] is True and len(metrics["epoch_seconds"]) == 4
    assert (run / ".hydra" / "overrides.yaml").read_text() == overrides_before  # its record is kept
    assert "resumed" in (run / "train.log").read_text()


def test_nan_loss_stops_as_diverged_and_keeps_the_last_good_checkpoint(tmp_path: Path, run_env: dict) -> None:
    # lr 0.01 for epoch 1, then 1e7: the loss explodes in epoch 2
    result = cli("train", *SMOKE, "epochs=3", "name=nan", "optimizer=sgd", "optimizer.lr=0.01", "scheduler=step",
                 "scheduler.step_size=1", "scheduler.gamma=1e9", cwd=tmp_path, env=run_env, check=False)  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (run,) = (tmp_path / "outputs" / "nan").iterdir()
    assert f"training diverged in {run}: epoch 2: the training loss became nan" in result.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["epochs_run"] == 1
    import torch

    last = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert last["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())


@pytest.mark.parametrize("command", ["resume", "evaluate"])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path, run_env: dict, command: str) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("last.pt", "best.pt"):
        (run / "checkpoints" / name).write_bytes(b"PK\x03\x04 this is not a checkpoint")
    args = ["train", f"resume={run}"] if command == "resume" else ["evaluate", str(run)]
    result = cli(*args, cwd=tmp_path, env=run_env, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is corrupt or not a cifarbench checkpoint" in result.stderr
