"""The CUDA path's decisions, tested on the CPU by making torch report what a GPU would."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from cifarbench import distributed
from cifarbench.models.fast import FastNet, GlobalMaxPool
from cifarbench.models.torchvision_zoo import torchvision_model
from cifarbench.precision import choose
from cifarbench.runtime import configure_backends, select_precision
from cifarbench.state import device_rng_state, set_device_rng_state

CUDA = torch.device("cuda", 0)


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")],
    ids=["V100", "T4", "A100", "H100"],
)
def test_auto_precision_uses_fp16_with_a_scaler_where_bf16_is_only_emulated(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], expected: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # as on a T4
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    precision = select_precision(choose("auto", CUDA, None, None, None, 0, None).name, CUDA)
    assert precision.name == expected
    assert precision.needs_grad_scaler == (expected == "fp16")


@pytest.fixture
def backend_flags():
    """The global flags configure_backends sets, put back afterwards (torch's flag objects answer
    through __getattr__, which pytest's monkeypatch cannot restore)."""
    flags = [
        (torch.backends.cudnn, "benchmark"),
        (torch.backends.cudnn, "allow_tf32"),
        (torch.backends.cuda.matmul, "allow_tf32"),
    ]
    before = [getattr(owner, name) for owner, name in flags]
    for owner, name in flags:
        setattr(owner, name, False)
    yield
    for (owner, name), value in zip(flags, before, strict=True):
        setattr(owner, name, value)


@pytest.mark.parametrize("deterministic", [False, True])
def test_cuda_runs_autotune_cudnn_unless_deterministic_and_use_tf32(backend_flags, deterministic: bool) -> None:
    configure_backends(CUDA, deterministic)
    assert torch.backends.cudnn.benchmark is (not deterministic)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


def test_cpu_runs_leave_the_backend_flags_alone(backend_flags) -> None:
    configure_backends(torch.device("cpu"), deterministic=False)
    assert not torch.backends.cudnn.benchmark and not torch.backends.cuda.matmul.allow_tf32


def test_each_rank_selects_its_gpu_before_joining_the_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.append(f"set_device({index})"))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend: calls.append(f"init({backend})"))
    world, device = distributed.init("auto")
    assert calls == ["set_device(1)", "init(nccl)"]
    assert world.rank == 1 and device == torch.device("cuda", 1)


def test_the_gpus_own_generator_is_saved_and_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropout masks on a GPU come from the GPU's generator: a checkpoint that lacks it would
    replay epoch 1's masks after a resume."""
    saved = torch.tensor([7, 7, 7], dtype=torch.uint8)
    restored: list[tuple[torch.Tensor, torch.device]] = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": saved)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append((state, device)))
    state = device_rng_state(CUDA)
    assert torch.equal(state, saved)
    set_device_rng_state(CUDA, state)
    assert restored and torch.equal(restored[0][0], saved) and restored[0][1] == CUDA
    assert device_rng_state(torch.device("cpu")) is None  # the CPU's generator is saved as torch's own


# Backward ops that torch.use_deterministic_algorithms(True) refuses on CUDA (torch's documentation
# of use_deterministic_algorithms): a model that calls one cannot train with deterministic=true there.
NO_DETERMINISTIC_CUDA_KERNEL = {
    "avg_pool3d_backward",
    "_adaptive_avg_pool2d_backward",
    "_adaptive_avg_pool3d_backward",
    "adaptive_max_pool2d_backward",
    "fractional_max_pool2d_backward",
    "fractional_max_pool3d_backward",
    "max_unpool2d",
    "max_unpool3d",
    "upsample_linear1d_backward",
    "upsample_bilinear2d_backward",
    "upsample_bicubic2d_backward",
    "upsample_trilinear3d_backward",
    "reflection_pad1d_backward",
    "reflection_pad2d_backward",
    "reflection_pad3d_backward",
    "grid_sampler_2d_backward",
    "nll_loss2d_forward",
    "histc",
    "median",
}


class RecordOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def ops_of_a_training_step(model: nn.Module, size: int = 32) -> set[str]:
    model.train()
    inputs = torch.randn(2, 3, size, size).to(memory_format=torch.channels_last)
    with RecordOps() as recorder:
        loss = nn.functional.cross_entropy(model(inputs), torch.tensor([1, 2]), label_smoothing=0.1)
        loss.backward()
    return recorder.names


@pytest.mark.parametrize(
    "build",
    [
        lambda: FastNet(),
        lambda: torchvision_model("vgg16"),
        lambda: torchvision_model("inception_v3", input_size=75),
        lambda: torchvision_model("resnet18"),
    ],
    ids=["fast", "vgg16", "inception_v3", "resnet18"],
)
def test_models_train_with_deterministic_kernels_on_cuda(build) -> None:
    torch.manual_seed(0)
    model = build().to(memory_format=torch.channels_last)
    recorded = ops_of_a_training_step(model)
    assert "convolution_backward" in recorded  # the recorder sees the backward pass
    assert not recorded & NO_DETERMINISTIC_CUDA_KERNEL


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_nets_pool_gives_the_adaptive_pools_numbers(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 256, 3, 3, dtype=dtype).to(memory_format=torch.channels_last).requires_grad_()
    y = x.detach().clone().requires_grad_()
    ours, theirs = GlobalMaxPool()(x), nn.AdaptiveMaxPool2d(1)(y)
    grad = torch.randn_like(ours)
    ours.backward(grad)
    theirs.backward(grad)
    assert torch.equal(ours, theirs) and torch.equal(x.grad, y.grad)


def test_vggs_pool_gives_the_adaptive_pools_numbers() -> None:
    from cifarbench.models.torchvision_zoo import DeterministicAdaptiveAvgPool2d

    torch.manual_seed(0)
    for size in (1, 2, 7, 14):  # repeated, repeated (uneven: torch's kernel), identity, pooled by 2x2
        x = torch.randn(2, 4, size, size)
        assert torch.allclose(DeterministicAdaptiveAvgPool2d((7, 7))(x), nn.AdaptiveAvgPool2d((7, 7))(x), atol=1e-6)
