"""The tabular MLP: categorical embeddings, Linear -> activation -> dropout blocks, a head.

Weights are a plain state dict (``weights.pt``), loaded with ``torch.load(weights_only=True)``
so a tampered file cannot run code.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from rayops.errors import TrainingError
from rayops.families import BUILT_IN_TASKS, register_family
from rayops.models.family import Family

if TYPE_CHECKING:
    from ray.train import Checkpoint

    from rayops.config import PipelineConfig

WEIGHTS = "weights.pt"
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def embedding_dim(slots: int) -> int:
    """Width of a learned embedding for a categorical column with ``slots`` values: fast.ai's
    rule of thumb (1.6 n^0.56), at most 32."""
    return min(32, max(2, round(1.6 * slots**0.56)))


def auto_hidden_sizes(n_inputs: int) -> list[int]:
    """Hidden widths sized from the input width: two layers as wide as the next power of two
    above twice the inputs, between 256 and 1024. On txhousing (bench_quality.py) two
    layers of 256 reached 1.04x HistGradientBoosting's RMSE where [256, 128] reached 1.01x
    and [64, 32] 0.97x; a network this size costs little on a CPU."""
    width = min(1024, max(256, 2 ** math.ceil(math.log2(max(2 * n_inputs, 1)))))
    return [width, width]


def embeddings_for(features: list[dict[str, Any]], min_slots: int | None) -> list[list[int]]:
    """``[start, slots, dim]`` of each one-hot block (in the preprocessed matrix) that the MLP
    learns an embedding for: categorical columns with at least ``min_slots`` values (the
    OTHER slot included)."""
    if min_slots is None:
        return []
    found, start = [], 0
    for feat in features:
        if feat["kind"] in ("categorical", "text"):
            slots = len(feat["categories"]) + 1
            if slots >= min_slots:
                found.append([start, slots, embedding_dim(slots)])
            start += slots
        elif feat["kind"] == "datetime":
            start += len(feat["parts"])
        else:
            # the value, its standardized twin, where it was null
            start += 1 + bool(feat.get("also_standard")) + bool(feat.get("missing"))
    return found


class MLP(nn.Module):
    """Embeddings replace the one-hot blocks named in ``embeddings`` (the index of the hot
    slot is looked up), the rest of the matrix passes through; then the hidden blocks."""

    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        hidden_sizes: list[int],
        dropout: float = 0.0,
        activation: str = "relu",
        embeddings: list[list[int]] | None = None,
    ) -> None:
        super().__init__()
        self.blocks = [tuple(e) for e in embeddings or []]
        self.embeddings = nn.ModuleList(nn.Embedding(slots, dim) for _, slots, dim in self.blocks)
        width = n_inputs + sum(dim - slots for _, slots, dim in self.blocks)
        layers: list[nn.Module] = []
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), _ACTIVATIONS[activation](), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, n_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.blocks:
            return self.net(x)
        pieces, at = [], 0
        for (start, slots, _), embedding in zip(self.blocks, self.embeddings, strict=True):
            pieces.append(x[:, at:start])
            pieces.append(embedding(x[:, start : start + slots].argmax(dim=1)))
            at = start + slots
        pieces.append(x[:, at:])
        return self.net(torch.cat(pieces, dim=1))


def build_model(spec: dict[str, Any]) -> MLP:
    """An MLP from the ``architecture`` dict stored in bundles and checkpoints."""
    return MLP(
        spec["n_inputs"],
        spec["n_outputs"],
        list(spec["hidden_sizes"]),
        spec.get("dropout", 0.0),
        spec.get("activation", "relu"),
        spec.get("embeddings"),
    )


def load_state_dict(source: Path | bytes, name: str | None = None) -> dict[str, Any]:
    """Tensors only: ``weights_only=True`` refuses any pickled object. ``source`` is a file
    or its bytes (then ``name`` says where they came from)."""
    try:
        opened = io.BytesIO(source) if isinstance(source, bytes) else source
        return torch.load(opened, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler raises several types for a tampered file
        shown = name or str(source)
        raise TrainingError(
            f"refusing to load {shown!r}: not a plain weights file ({exc})"
        ) from None


class MLPModel:
    """A trained MLP as a :class:`rayops.models.family.Model`."""

    family = "mlp"

    def __init__(self, network: MLP) -> None:
        self.network = network.eval()

    def save(self, folder: Path) -> None:
        torch.save(self.network.state_dict(), folder / WEIGHTS)

    @torch.inference_mode()
    def outputs(self, x: np.ndarray, probabilities: bool) -> np.ndarray:
        out = self.network(torch.from_numpy(x))
        return torch.softmax(out, dim=1).numpy() if probabilities else out.numpy()


class MLPFamily(Family):
    """A PyTorch network trained with DDP (:mod:`rayops.models.torch_loop`)."""

    name = "mlp"
    tasks = BUILT_IN_TASKS["mlp"]
    step = "epoch"
    in_process = True

    def architecture(
        self, cfg: PipelineConfig, n_inputs: int, n_outputs: int, features: list[dict[str, Any]]
    ) -> dict[str, Any]:
        model = cfg.model
        return {
            "family": self.name,
            "n_inputs": n_inputs,
            "n_outputs": n_outputs,
            "hidden_sizes": list(model.hidden_sizes or auto_hidden_sizes(n_inputs)),
            "dropout": model.dropout,
            "activation": model.activation,
            "embeddings": embeddings_for(features, model.embedding_min_categories),
        }

    def length(self, cfg: PipelineConfig) -> int:
        return cfg.train.epochs

    def trainer(self) -> tuple[Any, Callable[[dict[str, Any]], None]]:
        from ray.train.torch import TorchTrainer

        from rayops.models.torch_loop import train_fn_per_worker

        return TorchTrainer, train_fn_per_worker

    def network(self, architecture: dict[str, Any]) -> nn.Module:
        return build_model(architecture)

    def objective(self, loop: Any) -> Any:
        from rayops.models.torch_loop import Objective

        return Objective(loop.task.torch_loss())

    def wrap(self, network: nn.Module) -> Any:
        """A trained network as the family's :class:`Model`."""
        return MLPModel(network)  # type: ignore[arg-type]

    def trained_model(self, folder: Path, architecture: dict[str, Any]) -> Any:
        from rayops.models.checkpoints import CHECKPOINT_FILE

        network = self.network(architecture)
        network.load_state_dict(load_state_dict(folder / CHECKPOINT_FILE)["model"])
        return self.wrap(network)

    def history(
        self, cfg: PipelineConfig, run_name: str, newest: Checkpoint | None
    ) -> list[dict[str, float]]:
        from rayops.models.checkpoints import checkpoints_of, history_of, latest_state

        return history_of(latest_state(checkpoints_of(cfg, run_name), newest))

    def load(self, folder: Path, architecture: dict[str, Any]) -> Any:
        network = self.network(architecture)
        network.load_state_dict(load_state_dict(folder / WEIGHTS))
        return self.wrap(network)


register_family(MLPFamily())
