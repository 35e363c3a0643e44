"""Optimizers (conf/optimizer/*): a torch.optim class instantiated by Hydra from `_target_`, or
`MuonHybrid` (optimizer=muon): torch.optim.Muon for the weight matrices, another one for the rest.

The YAML is a `_partial_` torch.optim constructor; the keys that are ours split the parameters into
groups before the optimizer is built: `decay_norm_and_bias` (false: no weight decay on 1-D
parameters) and `norm_lr_scale` (normalisation layers' parameters get lr x scale and weight decay
/ scale, airbench's "bias scaler"; 1 = off).

`Lookahead` is the weight averaging of the loop's `lookahead_every` option.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn, optim
from torch.nn.modules.batchnorm import _NormBase

from cifarbench.config import instantiate
from cifarbench.errors import UserError

NORM_LAYERS = (_NormBase, nn.GroupNorm, nn.LayerNorm)


def build_optimizer(optimizer_cfg: DictConfig, model: nn.Module) -> optim.Optimizer:
    """Only trainable parameters are handed over, so frozen layers cost nothing and stay frozen.
    Parameters that need their own lr or weight decay (the two own keys) get their own groups.
    optimizer=muon (MuonHybrid): Muon takes the matrices (`muon_parameters`), and the optimizer of its
    `other` key everything else, grouped by the same two keys."""
    cfg = OmegaConf.to_container(optimizer_cfg, resolve=True)
    if cfg["_target_"].endswith(MuonHybrid.__name__):  # the keys of `other` group the rest; the others set Muon
        matrices = muon_parameters(model)
        if not matrices:
            raise UserError(
                "optimizer=muon found no trainable weight matrix besides the output layer (a frozen "
                "backbone?); choose another optimizer, e.g. optimizer=adam"
            )
        other = cfg.pop("other")
        rest = _parameter_groups(other, model, exclude={id(p) for p in matrices})  # pops our keys first
        return instantiate(cfg)(matrices, other=instantiate(other)(rest))
    groups = _parameter_groups(cfg, model)
    return instantiate(cfg)(groups)


def _parameter_groups(cfg: dict, model: nn.Module, exclude: set[int] = frozenset()) -> list[dict]:
    """The trainable parameters not in `exclude`, grouped by learning rate and weight decay (popping
    the two keys of ours from `cfg`)."""
    decay_norm_and_bias = cfg.pop("decay_norm_and_bias", True)
    norm_lr_scale = cfg.pop("norm_lr_scale", 1.0)
    lr, weight_decay = cfg["lr"], cfg.get("weight_decay", 0.0)
    norm_ids = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters()}
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad or id(p) in exclude:
            continue
        # Batch-norm shifts move slowly at a weight-sized lr; airbench scales their lr up and their
        # weight decay down by the same factor, so lr x weight decay (the shrink per step) is kept.
        scale = norm_lr_scale if id(p) in norm_ids else 1.0
        # Norm scales/shifts and biases are 1-D: decaying them only fights the normalisation.
        decay = 0.0 if p.ndim <= 1 and not decay_norm_and_bias else weight_decay / scale
        groups.setdefault((lr * scale, decay), []).append(p)
    return [{"params": params, "lr": g_lr, "weight_decay": g_decay} for (g_lr, g_decay), params in groups.items()]


def muon_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What Muon trains: every trainable weight with 2 or more dimensions (conv filters, linear
    weights) except the output layer's, the last one registered (Muon is meant for hidden layers;
    the classifier maps features to logits, where a plain optimizer does better)."""
    matrices = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    return matrices[:-1]


def matrix_view(tensor: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """A (out, rest) matrix of a weight: linear weights as they are, conv filters (out, in, kh, kw)
    flattened in the order the weight's memory is laid out (NCHW or channels_last), so that for the
    weight itself it is a view sharing its memory. `like`: flatten a gradient in its weight's order
    (copying if its layout differs). The column order does not matter to Muon: Newton-Schulz
    commutes with permuting columns."""
    like = tensor if like is None else like
    if like.ndim == 2:
        return tensor
    order = [0, *sorted(range(1, like.ndim), key=lambda d: -like.stride(d))]
    permuted = tensor.permute(order)
    return permuted.view(tensor.shape[0], -1) if like is tensor else permuted.reshape(tensor.shape[0], -1)


class MuonHybrid(optim.Optimizer):
    """torch.optim.Muon for the matrices, another torch optimizer (`other`) for the rest.

    torch's Muon accepts 2-D parameters only, so it is given `matrix_view`s of the weights: tensors
    sharing their memory, so its in-place update is the weight's update; before each step they get
    the same views of the gradients. This optimizer's `param_groups` are the real weights' (Muon's
    hyperparameters) followed by `other`'s own groups, so schedulers, the grad scaler, clipping and
    zero_grad see every parameter once; a step copies the Muon groups' lr etc. into torch's Muon.
    """

    def __init__(
        self,
        params: list[nn.Parameter],
        other: optim.Optimizer,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
    ) -> None:
        self.matrices = list(params)
        self.views = [nn.Parameter(matrix_view(p.detach()), requires_grad=False) for p in self.matrices]
        hyper = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay}
        self.muon = optim.Muon(self.views, **hyper, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        self.other = other
        super().__init__([{"params": self.matrices}], {**hyper, "ns_steps": ns_steps, "adjust_lr_fn": adjust_lr_fn})
        self.muon_groups = list(self.param_groups)
        self.param_groups = [*self.muon_groups, *other.param_groups]

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        for group, torch_group in zip(self.muon_groups, self.muon.param_groups, strict=True):
            torch_group.update({k: v for k, v in group.items() if k != "params"})
        for weight, view in zip(self.matrices, self.views, strict=True):
            view.grad = None if weight.grad is None else matrix_view(weight.grad, like=weight)
        self.muon.step()
        self.other.step()
        for view in self.views:
            view.grad = None

    def state_dict(self) -> dict:
        return {
            "muon": self.muon.state_dict(),
            "other": self.other.state_dict(),
            "muon_groups": [{k: v for k, v in g.items() if k != "params"} for g in self.muon_groups],
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        self.other.load_state_dict(state_dict["other"])  # makes new group dicts: point at them again
        for group, saved in zip(self.muon_groups, state_dict["muon_groups"], strict=True):
            group.update(saved)
        self.param_groups = [*self.muon_groups, *self.other.param_groups]


class Lookahead:
    """Lookahead weight averaging as airbench94 uses it: every `every` steps a slow copy of the
    weights (and batch-norm statistics) moves toward the fast ones, slow = d*slow + (1-d)*fast, and
    the fast weights restart from it. d = decay**every * (step/total)**3 grows from 0, so early
    training runs free and late training is smoothed; the last step leaves the slow weights in the
    model.

    `model` is the bare module (not its DDP or torch.compile wrapper, whose state-dict keys differ).
    """

    def __init__(self, model: nn.Module, every: int, decay: float, total_steps: int) -> None:
        self.model = model
        self.every, self.decay, self.total_steps = every, decay, total_steps
        self.steps = 0
        self.slow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.dtype.is_floating_point}

    @torch.no_grad()
    def after_batch(self) -> None:
        self.steps += 1
        if self.steps % self.every == 0:
            self._pull(self.decay**self.every * min(1.0, self.steps / self.total_steps) ** 3)
        if self.steps == self.total_steps:
            self.finish()

    @torch.no_grad()
    def finish(self) -> None:
        """Leave the slow weights in the model (also when a run stops early)."""
        self._pull(1.0)

    def _pull(self, weight: float) -> None:
        for name, fast in self.model.state_dict().items():
            if name in self.slow:
                self.slow[name].lerp_(fast, 1.0 - weight)
                fast.copy_(self.slow[name])

    def state_dict(self) -> dict:
        return {"steps": self.steps, "slow": self.slow}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        for name, value in state["slow"].items():
            self.slow[name].copy_(value)
