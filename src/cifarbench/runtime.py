"""Where and how the math runs: device, precision (autocast + grad scaler), library versions."""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from cifarbench.errors import UserError, check_choice
from cifarbench.options import DEVICES, PRECISIONS


def select_device(name: str) -> torch.device:
    check_choice("device", name, DEVICES)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but CUDA is not available here; use device=auto or device=cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("device=mps but MPS is not available here; use device=auto or device=cpu")
    return torch.device(name)


def cpu_bf16_units() -> str | None:
    """The CPU's hardware for bf16 math as torch detects it: "AMX", "AVX512-BF16", or None. Without
    one of them bf16 is emulated and slower than fp32; with one it may still be slower (issue 32),
    so it names the CPU in records and keys the precision cache, and precision.choose times."""
    cpu = getattr(torch, "cpu", None)
    for unit, check in (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported")):
        if getattr(cpu, check, lambda: False)():
            return unit
    return None


@dataclass(frozen=True)
class Precision:
    name: str  # fp32 | bf16 | fp16
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    @property
    def needs_grad_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
        return self.name == "fp16"

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_grad_scaler)


def select_precision(name: str, device: torch.device) -> Precision:
    """A named precision on `device` (`auto` is decided by precision.choose, which ends here)."""
    check_choice("precision", name, PRECISIONS[1:])  # every one but "auto"
    if name == "fp16" and device.type == "cpu":
        raise UserError("precision=fp16 is for GPUs; on the CPU use precision=bf16 or fp32")
    return Precision(name, device.type)


def cuda_has_native_bf16(device: torch.device) -> bool:
    """bf16 math units exist from compute capability 8.0 (A100, RTX 30xx) on. On a V100 or T4 (the
    free Colab GPU) torch.cuda.is_bf16_supported() is still True, because bf16 is emulated there,
    slower than fp32; those GPUs get fp16 with a grad scaler instead."""
    return torch.cuda.is_bf16_supported() and torch.cuda.get_device_capability(device)[0] >= 8


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """On CUDA: cuDNN picks the fastest convolution algorithm for each input shape (it benchmarks
    them once; not with `deterministic`, since the pick may change between runs), and fp32 matrix
    products and convolutions use TF32 tensor cores (10-bit mantissa inputs, fp32 accumulation),
    as for every fp32 op under autocast. Elsewhere nothing changes."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def cpu_name() -> str:
    """The CPU's model name (e.g. "AMD EPYC"), so that every recorded figure says what hardware it
    comes from; platform.processor() alone gives only "x86_64" or "" on Linux."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_description() -> str:
    """Model name, core count and the bf16 units torch sees (which alone do not decide precision)."""
    return f"{cpu_name()}, {os.cpu_count()} cores, {cpu_bf16_units() or 'no bf16 units'}"


def versions() -> dict[str, str]:
    import hydra
    import sklearn
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "hydra": hydra.__version__,
        "sklearn": sklearn.__version__,
        "cuda": str(torch.version.cuda),
        "cpu": cpu_description(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
