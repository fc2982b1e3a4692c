"""KNOWN-BAD SUBMISSION (tests/adversarial/lab01/torch_compile): torch.compile does the fusion."""

import torch

from toy_step import eager_step

fused_step = torch.compile(eager_step, dynamic=True)
