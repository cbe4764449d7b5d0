"""The tabular MLP and its on-disk bundle: weights plus JSON, never a pickle.

A bundle is a folder with ``weights.pt`` (a state dict, loaded with
``torch.load(weights_only=True)``) and ``bundle.json`` (architecture, fitted preprocessing,
input schema, metrics, dataset version). Serving and the MLflow pyfunc both load it.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rayops.errors import TrainingError

WEIGHTS = "weights.pt"
BUNDLE = "bundle.json"
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class MLP(nn.Module):
    """Linear -> activation -> dropout blocks, then a linear head."""

    def __init__(self, n_inputs: int, n_outputs: int, hidden_sizes: list[int],
                 dropout: float = 0.0, activation: str = "relu") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_inputs
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), _ACTIVATIONS[activation](), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, n_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_model(spec: dict[str, Any]) -> MLP:
    """An MLP from the ``architecture`` dict stored in bundles and checkpoints."""
    return MLP(spec["n_inputs"], spec["n_outputs"], list(spec["hidden_sizes"]),
               spec.get("dropout", 0.0), spec.get("activation", "relu"))


def load_state_dict(source: Path | bytes, name: str | None = None) -> dict[str, Any]:
    """Tensors only: ``weights_only=True`` refuses any pickled object. ``source`` is a file
    or its bytes (then ``name`` says where they came from)."""
    try:
        opened = io.BytesIO(source) if isinstance(source, bytes) else source
        return torch.load(opened, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler raises several types for a tampered file
        shown = name or str(source)
        raise TrainingError(f"refusing to load {shown!r}: not a plain weights file ({exc})"
                            ) from None


@dataclass(frozen=True)
class Bundle:
    """A trained model with everything needed to apply it to raw records."""

    model: MLP
    meta: dict[str, Any]

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), folder / WEIGHTS)
        (folder / BUNDLE).write_text(json.dumps(self.meta, indent=2, sort_keys=True))
        return folder

    @classmethod
    def load(cls, folder: Path) -> Bundle:
        meta_path = folder / BUNDLE
        if not meta_path.exists():
            raise TrainingError(f"{str(folder)!r} is not a rayops model bundle (no {BUNDLE})")
        meta = json.loads(meta_path.read_text())
        model = build_model(meta["architecture"])
        model.load_state_dict(load_state_dict(folder / WEIGHTS))
        model.eval()
        return cls(model, meta)
