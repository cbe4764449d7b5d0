"""The pinball (quantile) loss a network minimises to forecast quantiles."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class PinballLoss(torch.nn.Module):
    """Mean pinball loss of outputs ``(n, len(quantiles))`` against the first column of
    the targets (a forecast's targets carry its scale in further columns)."""

    def __init__(self, quantiles: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("levels", torch.tensor(list(quantiles), dtype=torch.float32))

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        actual = targets.reshape(len(targets), -1)[:, :1]
        diff = actual - outputs
        levels = self.levels.to(outputs.dtype)
        return torch.maximum(levels * diff, (levels - 1) * diff).mean()
