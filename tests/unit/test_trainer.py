"""The trainer a run builds: no DatasetManager actor when no Ray Dataset travels with it."""

from ray.train import ScalingConfig
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

from rayops.train.driver import without_dataset_manager


def _callbacks(trainer: type) -> set[type]:
    built = trainer(lambda config: None, scaling_config=ScalingConfig(num_workers=1))
    return {type(c) for c in built._create_default_callbacks()}


def test_a_run_without_datasets_starts_no_dataset_manager():
    assert DatasetsCallback in _callbacks(TorchTrainer)  # what Ray 2.60 adds by default
    trimmed = without_dataset_manager(TorchTrainer)
    assert trimmed.__name__ == "TorchTrainer"
    assert DatasetsCallback not in _callbacks(trimmed)
    assert _callbacks(TorchTrainer) - _callbacks(trimmed) == {DatasetsCallback}
