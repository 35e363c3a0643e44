"""`model.init=keras`: Keras's defaults on a torch model, for the report models built in Keras (000's
student and improved, 003's MFM-24, 004's custom CNN), which trained with them.

Keras and torch differ in three defaults a reader of those reports cannot see in the text:
- kernels: Keras's Conv2D and Dense draw glorot-uniform (torch.nn.init.xavier_uniform_), torch's
  layers kaiming-uniform with a=sqrt(5);
- biases: Keras starts them at zero, torch draws them uniformly;
- batch norm: Keras's BatchNormalization keeps 0.99 of its running statistics per step (torch's
  momentum 0.01, against torch's default 0.1) and adds epsilon 1e-3 (torch's default 1e-5).
"""

from __future__ import annotations

from torch import nn

KERAS_BN_MOMENTUM = 0.01  # Keras momentum=0.99 keeps 0.99 of the old statistics; torch's momentum is the new share
KERAS_BN_EPS = 1e-3


def keras_init(model: nn.Module) -> nn.Module:
    """Re-initialises every convolution and linear layer as Keras would and gives every batch-norm
    layer Keras's momentum and epsilon; returns the model."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = KERAS_BN_MOMENTUM
            module.eps = KERAS_BN_EPS
    return model
