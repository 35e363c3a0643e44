"""`cifarbench export`: a trained run as files other programs load, written inside its directory.

- ONNX (`export/model-<weights>.onnx`): the tested weights (EMA and lookahead resolved, as the final
  test read them) in fp32, the run's normalisation built in: float images in [0, 1], NCHW, any batch
  size, logits out. Its metadata holds the class names, image size and normalisation, so the file
  alone is enough for `cifarbench predict --onnx` (onnx_predict.py: onnxruntime, numpy, Pillow).
- safetensors (`export/model-<weights>.safetensors`): the same weights, with a JSON beside them
  (`model-<weights>.json`) holding the model config, class names and normalisation.

Each export verifies itself against the weights in torch (fp32, one view, no test-time
augmentation): on up to 1,000 test images of the run's own test split, spread over its classes,
onnxruntime (or the reloaded safetensors) and torch must agree on the top-1 class; the command
prints how many do and the largest logit difference.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarbench import __version__
from cifarbench.errors import UserError, import_extra, one_line
from cifarbench.files import write_stream_atomic, write_text_atomic
from cifarbench.inference import LoadedRun, final_test_setting, load_trained

FORMATS = ("onnx", "safetensors")
VERIFY_IMAGES = 1000
OPSET = 18


class WithNormalization(nn.Module):
    """The run's model with its normalisation in front: float images in [0, 1] in, logits out."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


@dataclass
class Exported:
    files: list[Path]
    compared: int  # test images run through both
    agreed: int  # of them, with the same top-1 class
    max_logit_difference: float

    def summary(self) -> str:
        runtime = "onnxruntime" if self.files[0].suffix == ".onnx" else "the reloaded safetensors"
        verdict = (
            f"agree on the top-1 class of all {self.compared}"
            if self.agreed == self.compared
            else f"DIFFER on the top-1 class of {self.compared - self.agreed} of {self.compared}"
        )
        return (
            f"{runtime} and torch (fp32, one view) {verdict} test images; "
            f"largest logit difference {self.max_logit_difference:.2e}"
        )


def normalization_of(loaded: LoadedRun) -> tuple[list[float], list[float]]:
    """The run's mean and std on the [0, 1] scale, whichever normalisation it trained with."""
    normalize = loaded.normalize()
    return list(normalize.mean), list(normalize.std)


def describe(loaded: LoadedRun, which: str, mean: list[float], std: list[float]) -> dict[str, Any]:
    """What the exported weights are and what they expect: the JSON beside them, and ONNX metadata."""
    size = loaded.data.image_size
    model = dict(loaded.config["model"])
    if "weights" in model:
        model["weights"] = "none"  # every weight is in the exported file: nothing to download to rebuild it
    return {
        "cifarbench": __version__,
        "model": model,
        "classes": list(loaded.data.classes),
        "data": loaded.data.name,
        "input": {"layout": "NCHW", "dtype": "float32", "range": [0.0, 1.0], "height": size, "width": size},
        "normalization": {"name": loaded.config["data"]["normalization"], "mean": mean, "std": std},
        "weights": which,
        "run": str(loaded.checkpoint.parent.parent),
    }


def export_run(run_dir: Path, fmt: str = "onnx", which: str = "auto") -> Exported:
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not known; choose one of {', '.join(FORMATS)}")
    loaded = load_trained(run_dir, which, torch.device("cpu"))
    which = loaded.which
    model = loaded.model.float().to(memory_format=torch.contiguous_format).eval()
    mean, std = normalization_of(loaded)
    wrapped = WithNormalization(model, mean, std).eval()
    info = describe(loaded, which, mean, std)
    images = verification_images(loaded)
    folder = run_dir / "export"
    folder.mkdir(exist_ok=True)
    if fmt == "onnx":
        return export_onnx(wrapped, info, images, folder / f"model-{which}.onnx")
    return export_safetensors(wrapped, info, images, folder / f"model-{which}")


def verification_images(loaded: LoadedRun) -> torch.Tensor:
    """Up to 1,000 of the run's test images, evenly spread over its test split (ordered by class),
    as float in [0, 1]."""
    _, test, _, _ = final_test_setting(loaded)
    picks = torch.linspace(0, len(test) - 1, min(VERIFY_IMAGES, len(test))).round().long()
    return test.images[picks.to(test.images.device)].cpu().float().div(255.0)


def _compare(reference: torch.Tensor, other: torch.Tensor) -> tuple[int, float]:
    agreed = int((reference.argmax(1) == other.argmax(1)).sum())
    return agreed, float((reference - other).abs().max())


def _quiet(call: Any) -> Any:
    """torch.onnx prints its progress: kept off the command's output, which is the export's summary."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return call()


def to_onnx(module: nn.Module, sample: torch.Tensor) -> Any:
    """`module` as an ONNX model proto with a dynamic batch; a module that cannot be exported is
    refused in one line naming its first layer that cannot (failing_layer)."""
    import_extra("onnxscript", "export", "cifarbench export --format onnx")
    batch = torch.export.Dim("batch", min=1)
    try:
        program = _quiet(
            lambda: torch.onnx.export(
                module,
                (sample,),
                None,
                dynamo=True,
                opset_version=OPSET,
                input_names=["images"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
        )
    except Exception as exc:  # torch.export's and the ONNX translation's many errors
        layer = failing_layer(module, sample)
        where = f"layer {layer[0]} ({layer[1]})" if layer else "the model"
        raise UserError(f"this model cannot be exported to ONNX: {where} fails: {one_line(exc)[:160]}") from None
    return program.model_proto


def failing_layer(module: nn.Module, sample: torch.Tensor) -> tuple[str, str] | None:
    """(name, type) of the first leaf layer, in forward order, that does not export on its own input."""
    inputs: dict[str, tuple] = {}

    def keep_input(name: str) -> Callable[[nn.Module, tuple], None]:
        def hook(layer: nn.Module, args: tuple) -> None:  # a pre-hook that returns None changes nothing
            inputs.setdefault(name, args)

        return hook

    leaves = {name: leaf for name, leaf in module.named_modules() if not list(leaf.children())}
    hooks = [leaf.register_forward_pre_hook(keep_input(name)) for name, leaf in leaves.items()]
    try:
        with torch.no_grad():
            module(sample)
    except Exception:  # the whole model failed to run: the layers seen so far are checked
        pass
    finally:
        for hook in hooks:
            hook.remove()
    for name, args in inputs.items():
        try:
            _quiet(lambda leaf=leaves[name], args=args: torch.onnx.export(leaf, args, None, dynamo=True, verbose=False))
        except Exception:
            return name, type(leaves[name]).__name__
    return None


def export_onnx(wrapped: nn.Module, info: dict[str, Any], images: torch.Tensor, path: Path) -> Exported:
    onnx = import_extra("onnx", "export", "cifarbench export --format onnx")
    ort = import_extra("onnxruntime", "export", "cifarbench export --format onnx")
    proto = to_onnx(wrapped, images[:2])
    for key, value in {"cifarbench": json.dumps(info)}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    payload = proto.SerializeToString()
    onnx.checker.check_model(proto)
    session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        reference = wrapped(images)
    other = torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0])
    agreed, difference = _compare(reference, other)
    write_stream_atomic(path, lambda fh: fh.write(payload))
    return Exported([path], len(images), agreed, difference)


def export_safetensors(wrapped: WithNormalization, info: dict[str, Any], images: torch.Tensor, stem: Path) -> Exported:
    safetensors_torch = import_extra("safetensors.torch", "export", "cifarbench export --format safetensors")
    from cifarbench.models import build_model

    weights = {k: v.contiguous() for k, v in wrapped.model.state_dict().items()}
    payload = safetensors_torch.save(weights, metadata={"cifarbench": json.dumps(info)})
    # the check: the file's weights, read back into a model built from the JSON's config alone
    from omegaconf import OmegaConf

    rebuilt = build_model(OmegaConf.create(info["model"]), len(info["classes"]), info["input"]["height"])
    rebuilt.load_state_dict(safetensors_torch.load(payload))
    reloaded = WithNormalization(rebuilt.eval(), info["normalization"]["mean"], info["normalization"]["std"])
    with torch.no_grad():
        agreed, difference = _compare(wrapped(images), reloaded.eval()(images))
    files = [stem.with_suffix(".safetensors"), stem.with_suffix(".json")]
    write_stream_atomic(files[0], lambda fh: fh.write(payload))
    write_text_atomic(files[1], json.dumps(info, indent=2) + "\n")
    return Exported(files, len(images), agreed, difference)
