"""`cifarbench export` (ONNX, safetensors) and `cifarbench predict --onnx`, through the CLI, on a
run trained here on a generated CIFAR-10 archive in the official layout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cifarbench.errors import UserError
from conftest import cli
from test_datasets import cifar10_python_archive

TINY = ["device=cpu", "progress=false", "epochs=1", "batch_size=50", "augmentation=none"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A run of `improved` (small widths) with EMA on, so that the tested weights are not the raw ones."""
    home = tmp_path_factory.mktemp("export")
    archive = home / "cifar-10-python.tar.gz"
    cifar10_python_archive(archive, per_class_batch=4)
    env = {"CIFARBENCH_DATA": str(home / "d")}
    overrides = [f"data.source={archive}", "data.val_size=40", "model=improved", "model.widths=[8,16]"]
    cli("train", *overrides, "model.dense=16", "ema_decay=0.9", *TINY, "hydra.run.dir=run", cwd=home, env=env)
    return home / "run", env


def test_onnx_export_verifies_itself_and_takes_any_batch(trained: tuple[Path, dict]) -> None:
    import onnxruntime as ort

    from cifarbench.export import WithNormalization, normalization_of
    from cifarbench.inference import load_trained

    run, env = trained
    result = cli("export", str(run), cwd=run.parent, env=env)
    model_file = run / "export" / "model-best.onnx"
    assert f"wrote {model_file}" in result.stdout
    # the run's 40 generated test images (on real data, 1,000 of them)
    assert "onnxruntime and torch (fp32, one view) agree on the top-1 class of all 40 test images" in result.stdout
    difference = float(re.search(r"largest logit difference (\S+)", result.stdout).group(1))
    assert difference < 1e-3

    loaded = load_trained(run, "best", torch.device("cpu"))
    reference = WithNormalization(
        loaded.model.float().to(memory_format=torch.contiguous_format), *normalization_of(loaded)
    )
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 7):  # the batch dimension is dynamic
        images = torch.rand(batch, 3, 32, 32)
        logits = session.run(["logits"], {"images": images.numpy()})[0]
        assert logits.shape == (batch, 10)
        assert np.allclose(logits, reference.eval()(images).detach().numpy(), atol=1e-3)
    described = json.loads(session.get_modelmeta().custom_metadata_map["cifarbench"])
    assert described["classes"][0] == "airplane" and described["input"]["range"] == [0.0, 1.0]


def test_safetensors_export_holds_the_tested_weights_and_what_they_are(trained: tuple[Path, dict]) -> None:
    from safetensors.torch import load_file

    from cifarbench.state import load_checkpoint, weights_to_test

    run, env = trained
    result = cli("export", str(run), "--format", "safetensors", "--checkpoint", "last", cwd=run.parent, env=env)
    assert "the reloaded safetensors and torch (fp32, one view) agree on the top-1 class of all 40" in result.stdout
    weights = load_file(run / "export" / "model-last.safetensors")
    expected = weights_to_test(load_checkpoint(run / "checkpoints" / "last.pt"), "last")  # the EMA's, resolved
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k].cpu()) for k in weights)
    info = json.loads((run / "export" / "model-last.json").read_text())
    assert info["model"]["_target_"].endswith("ImprovedStudent") and len(info["classes"]) == 10
    assert info["normalization"]["mean"] == pytest.approx([0.4914, 0.4822, 0.4465], abs=1e-6)


def test_predict_with_onnx_runs_without_torch_and_agrees_with_the_run(
    trained: tuple[Path, dict], tmp_path: Path
) -> None:
    run, env = trained
    cli("export", str(run), cwd=run.parent, env=env)
    images = []
    for i, size in enumerate([(32, 32), (50, 40)]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    by_torch = cli("predict", str(run), *images, "--output", "t.csv", cwd=tmp_path, env=env).stdout
    for name in ("torch", "torchvision"):  # neither may be imported
        (tmp_path / "blocked" / name).mkdir(parents=True)
        (tmp_path / "blocked" / name / "__init__.py").write_text(f"raise ImportError('{name} imported')\n")
    blocked = {**env, "PYTHONPATH": str(tmp_path / "blocked")}
    onnx_file = str(run / "export" / "model-best.onnx")
    by_onnx = cli("predict", "--onnx", onnx_file, *images, "--output", "o.csv", cwd=tmp_path, env=blocked).stdout
    top = [line.split(": ")[1].split(" ")[0] for line in by_torch.splitlines() if line.startswith(str(tmp_path))]
    assert top == [line.split(": ")[1].split(" ")[0] for line in by_onnx.splitlines() if line.startswith(str(tmp_path))]
    assert len(top) == 2 and (tmp_path / "o.csv").is_file()


def test_a_layer_that_cannot_export_is_named() -> None:
    from cifarbench.export import to_onnx

    class SignFlip(nn.Module):  # data-dependent control flow: torch.export cannot capture it
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), SignFlip(), nn.Flatten()).eval()
    with pytest.raises(UserError, match=r"cannot be exported to ONNX: layer 2 \(SignFlip\) fails"):
        to_onnx(model, torch.rand(2, 3, 8, 8))


def test_export_without_its_extra_is_one_line(trained: tuple[Path, dict], tmp_path: Path) -> None:
    run, env = trained
    (tmp_path / "blocked" / "onnxscript").mkdir(parents=True)
    (tmp_path / "blocked" / "onnxscript" / "__init__.py").write_text("raise ImportError('no onnxscript')\n")
    result = cli("export", str(run), cwd=tmp_path, env={**env, "PYTHONPATH": str(tmp_path / "blocked")}, check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "needs the optional 'export' extra, which is not installed: pip install 'cifarbench[export]'" in lines[0]
