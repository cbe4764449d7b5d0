"""The model, train and tune sections."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from rayops.config.base import _Section
from rayops.errors import ConfigError
from rayops.families import family_names, import_plugins


class BoostingConfig(_Section):
    """Gradient-boosted trees (model.family: xgboost). The defaults are XGBoost's own except
    a smaller learning rate with many more rounds: early stopping on the validation split
    picks the length, which is what makes defaults work across datasets."""

    learning_rate: float = Field(0.05, gt=0.0, le=1.0, description="Shrinkage (eta).")
    max_depth: int = Field(6, ge=0, le=64, description="Deepest tree (0: no limit).")
    min_child_weight: float = Field(1.0, ge=0.0, description="Smallest hessian in a leaf.")
    subsample: float = Field(0.8, gt=0.0, le=1.0, description="Rows sampled per tree.")
    colsample_bytree: float = Field(0.8, gt=0.0, le=1.0, description="Columns sampled per tree.")
    reg_lambda: float = Field(1.0, ge=0.0, description="L2 penalty on leaf weights.")
    max_bin: int = Field(256, ge=2, description="Histogram bins per feature.")
    max_rounds: int = Field(
        2000,
        ge=1,
        le=100_000,
        description="Most boosting rounds; early stopping usually ends far sooner.",
    )
    early_stopping_rounds: int | None = Field(
        50,
        ge=1,
        description="Stop after this many rounds without a lower validation loss "
        "and keep the best round (null: run max_rounds).",
    )
    report_every: int = Field(
        25,
        ge=1,
        description="Rounds between reports (metrics, a checkpoint, a step for Tune's scheduler).",
    )


class RecommenderModelConfig(_Section):
    """The recommenders' networks (model.family: bpr or sasrec)."""

    dim: int = Field(
        64,
        ge=2,
        le=4096,
        description="Width of the user and item embeddings (and of SASRec's attention).",
    )
    blocks: int = Field(2, ge=1, le=24, description="SASRec's self-attention blocks.")
    heads: int = Field(
        1, ge=1, le=64, description="SASRec's attention heads (dim must divide by it)."
    )
    dropout: float = Field(
        0.2, ge=0.0, lt=1.0, description="SASRec's dropout on the embeddings and in each block."
    )
    objective: Literal["softmax", "sampled"] = Field(
        "softmax",
        description="How SASRec learns the next item. softmax: cross-entropy "
        "over the catalogue (see negatives); sampled: the original SASRec's, the next item "
        "against one random item (binary cross-entropy).",
    )
    negatives: int | None = Field(
        None,
        ge=1,
        description="softmax over the batch's next items and this many random "
        "items (logQ-corrected), instead of the whole catalogue: training memory then grows "
        "with the batch, not with the catalogue (null: the whole catalogue, exact; set it "
        "for catalogues past about 100,000 items; on MovieLens 100K, 256 cost a third of "
        "recall@10).",
    )
    shard_tables: bool | Literal["auto"] = Field(
        "auto",
        description="Shard the embedding tables (the items'; BPR's users' too) by "
        "rows across the training workers: each holds its rows, their gradients and their "
        "optimizer state, and the catalogue's softmax is computed where the rows are. "
        "auto: when their training state (16 bytes a float) is over shard_above_mb and "
        "train.num_workers > 1. Validation, checkpoints and serving hold the weights whole "
        "(4 bytes a float).",
    )
    shard_above_mb: float = Field(
        1024.0,
        gt=0.0,
        description="With shard_tables: auto, the tables' training state "
        "(MiB) above which they are sharded.",
    )

    @model_validator(mode="after")
    def _heads(self) -> RecommenderModelConfig:
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} does not divide by heads {self.heads}")
        return self


class ModelConfig(_Section):
    # plugins come first: they are imported before family is checked against the registry
    plugins: list[str] = Field(
        default_factory=list,
        description="Python modules that register more model families "
        "(rayops.families.register_family); imported wherever the config is validated and "
        "in every replica.",
    )
    family: str = Field(
        "mlp",
        description="mlp: a PyTorch network trained with DDP; xgboost: gradient-"
        "boosted trees with Ray Train's XGBoostTrainer; for recommendation (its default: "
        "sasrec) bpr or sasrec; or a family a plugin registers.",
    )
    hidden_sizes: list[Annotated[int, Field(ge=1, le=8192)]] | None = Field(
        None,
        min_length=1,
        description="Width of each hidden layer of the MLP; null sizes "
        "them from the number of inputs (two layers, 256 to 1024 wide).",
    )
    dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout after each hidden layer. Off by default: early stopping already "
        "keeps the best epoch, and on txhousing dropout 0.1 cost 1.5% RMSE.",
    )
    activation: Literal["relu", "gelu", "tanh"] = Field("relu", description="Hidden activation.")
    embedding_min_categories: int | None = Field(
        16,
        ge=2,
        description="Categorical columns with at least this many values (the "
        "'other' slot included) get a learned embedding in the MLP instead of entering "
        "one-hot; null: one-hot only.",
    )
    xgboost: BoostingConfig = Field(default_factory=BoostingConfig)
    recommender: RecommenderModelConfig = Field(default_factory=RecommenderModelConfig)

    @field_validator("plugins")
    @classmethod
    def _importable(cls, plugins: list[str]) -> list[str]:
        try:
            import_plugins(plugins)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("model.plugins: ")) from None
        return plugins

    @field_validator("family")
    @classmethod
    def _known_family(cls, family: str) -> str:
        if family not in family_names():
            raise ValueError(
                f"{family!r} is not a known family; known: "
                f"{', '.join(family_names())} (a plugin's: list its module in "
                "model.plugins)"
            )
        return family


AUTO_ACCUMULATE = 4  # batches per step for several CPU workers (tests/benchmarks/bench_train.py)
AUTO_MIN_STEPS = 32  # optimizer steps an epoch that accumulation must leave each worker


class TrainConfig(_Section):
    num_workers: int = Field(2, ge=1, description="Data-parallel (DDP) training workers.")
    use_gpu: bool = Field(False, description="One GPU per worker; NCCL instead of gloo.")
    cpus_per_worker: float = Field(
        1.0,
        gt=0.0,
        description="CPUs each worker reserves. Fractions leave room for Ray Data on small hosts.",
    )
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict,
        description="Extra Ray resources each worker reserves, e.g. {memory: 2e9} or a custom "
        "accelerator resource; CPU and GPU come from cpus_per_worker and use_gpu.",
    )
    epochs: int = Field(
        100,
        ge=1,
        le=10_000,
        description="Most passes over the training data (MLP); early stopping usually ends "
        "a run far sooner.",
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        description="Rows per batch on each worker; the global batch is batch_size x workers. "
        "null: from the training rows, about 32 steps per epoch on each worker, between 16 "
        "and 256 rows (a small table still takes enough steps per epoch to learn).",
    )
    accumulate_grad_batches: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Batches each worker adds up before one optimizer step. With several "
        "workers their gradients are all-reduced once per step instead of once per batch "
        "(DDP no_sync), which is what lets a small model scale over CPU workers; the "
        "global batch is batch_size x workers x this. null: 4 when several workers train "
        "on CPUs and each still takes 32 or more optimizer steps an epoch, else 1.",
    )
    learning_rate: float = Field(
        1e-3, gt=0.0, lt=10.0, description="AdamW learning rate for a single worker."
    )
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "sqrt",
        description="How the learning rate grows with the global batch (x workers x "
        "accumulate_grad_batches): sqrt "
        "suits Adam-type optimizers, linear is the SGD rule (use with warmup_epochs).",
    )
    lr_schedule: Literal["plateau", "constant", "cosine", "step"] = Field(
        "plateau",
        description="plateau: halve the rate when the target metric has not improved for a "
        "third of early_stopping_patience epochs (suits runs whose length early stopping "
        "decides); cosine, step (x0.1 at 50% and 75%) and constant follow the epochs, "
        "after warmup.",
    )
    warmup_epochs: int = Field(0, ge=0, description="Epochs of linear warmup from lr/10.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="bf16 autocast (CPU or GPU) or fp16 autocast with a grad scaler (GPU).",
    )
    early_stopping_patience: int | None = Field(
        10,
        ge=1,
        description="Stop after this many epochs without a better target metric (the best "
        "epoch's checkpoint is the model); null: train every epoch.",
    )
    max_failures: int = Field(
        2, ge=0, description="Worker-group failures survived by resuming from a checkpoint."
    )
    data_loading: Literal["auto", "memory", "stream"] = Field(
        "auto",
        description="memory: each worker keeps its shard as tensors after the first epoch "
        "(fast); stream: Ray Data every epoch (larger than memory); auto: memory below "
        "1 GiB per shard.",
    )
    seed: int = Field(42, description="Seed for weights and shuffling.")
    checkpoints_to_keep: int = Field(
        2, ge=1, description="Best checkpoints kept in storage, ranked by the target metric."
    )

    @model_validator(mode="after")
    def _precision(self) -> TrainConfig:
        if self.precision == "fp16" and not self.use_gpu:
            raise ValueError(
                "precision 'fp16' needs use_gpu: true (its gradient scaler is "
                "CUDA's); use 'bf16' on CPUs"
            )
        return self

    @model_validator(mode="after")
    def _schedule(self) -> TrainConfig:
        if self.lr_schedule == "plateau" and self.warmup_epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) needs an lr_schedule that "
                "follows the epochs (cosine, step or constant), not 'plateau'"
            )
        return self

    def batch_for(self, train_rows: int) -> int:
        """The batch size per worker: the configured one, or one sized from the rows."""
        if self.batch_size is not None:
            return self.batch_size
        per_worker = train_rows / self.num_workers / 32
        return int(min(256, max(16, 2 ** math.floor(math.log2(max(per_worker, 1))))))

    def accumulation_for(self, train_rows: int) -> int:
        """Batches per optimizer step: the configured number, or (null) ``AUTO_ACCUMULATE``
        where several CPU workers would otherwise all-reduce a small model's gradients after
        every batch, and each still takes ``AUTO_MIN_STEPS`` steps an epoch."""
        if self.accumulate_grad_batches is not None:
            return self.accumulate_grad_batches
        if self.num_workers == 1 or self.use_gpu:
            return 1
        batches = train_rows / self.num_workers / self.batch_for(train_rows)
        return AUTO_ACCUMULATE if batches >= AUTO_ACCUMULATE * AUTO_MIN_STEPS else 1

    @property
    def plateau_patience(self) -> int:
        """Stale epochs before a plateau schedule halves the learning rate."""
        return max(1, (self.early_stopping_patience or 9) // 3)

    @property
    def lr_factor(self) -> float:
        """Learning-rate multiplier for the global batch of num_workers x batch_size x
        accumulate_grad_batches."""
        growth = float(self.num_workers * (self.accumulate_grad_batches or 1))
        return {"none": 1.0, "linear": growth, "sqrt": growth**0.5}[self.lr_scaling]


class _Dim(_Section):
    pass


class UniformDim(_Dim):
    type: Literal["uniform"]
    low: float
    high: float


class LogUniformDim(_Dim):
    type: Literal["loguniform"]
    low: float = Field(gt=0.0)
    high: float = Field(gt=0.0)


class RandIntDim(_Dim):
    type: Literal["randint"]
    low: int
    high: int = Field(description="Exclusive upper bound.")


class ChoiceDim(_Dim):
    type: Literal["choice"]
    values: list[Any] = Field(min_length=1)


SearchDim = Annotated[
    UniformDim | LogUniformDim | RandIntDim | ChoiceDim, Field(discriminator="type")
]


class SchedulerConfig(_Section):
    """Which trials stop early: ASHA (after ``grace_period`` epochs) or none (``fifo``)."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value

    type: Literal["asha", "fifo"] = Field("asha", description="asha stops weak trials early.")
    grace_period: int = Field(2, ge=1, description="Epochs every trial runs before it can stop.")
    reduction_factor: float = Field(2.0, gt=1.0, description="ASHA's halving rate.")


class TuneConfig(_Section):
    """A sweep over the training code: trials, their search space and early stopping."""

    enabled: bool = Field(False, description="Run a sweep instead of a single training run.")
    search: Literal["random", "grid", "optuna"] = Field(
        "random",
        description="random sampling (num_samples trials); grid (every combination of the "
        "choice values, once; num_samples is ignored); optuna (TPE, learns from finished "
        "trials).",
    )
    num_samples: int = Field(4, ge=1, description="Trials to run.")
    max_concurrent_trials: int = Field(1, ge=1, description="Trials running at the same time.")
    metric: str | None = Field(
        None,
        description="Metric that ranks trials and checkpoints and drives early "
        "stopping; default valid_f1 (classification), valid_rmse (regression), valid_mae "
        "(forecasting).",
    )
    mode: Literal["min", "max"] | None = Field(
        None,
        description="Direction of the metric; default: the direction in which it "
        "gets better (max for f1, min for rmse).",
    )
    search_space: dict[str, SearchDim] = Field(
        default_factory=dict,
        description="Dotted config keys under model. or train. mapped to a distribution.",
    )
    scheduler: SchedulerConfig = Field(
        default_factory=SchedulerConfig,
        description="Early stopping of trials: `asha` or `fifo` (none), or a mapping with "
        "`type`, `grace_period` and `reduction_factor`.",
    )
    final_model: Literal["reuse", "retrain"] = Field(
        "reuse",
        description="reuse the best trial's model, or retrain the best configuration once "
        "more before it becomes the challenger.",
    )

    @model_validator(mode="after")
    def _dims(self) -> TuneConfig:
        for key, dim in self.search_space.items():
            if isinstance(dim, (UniformDim, LogUniformDim, RandIntDim)) and dim.low >= dim.high:
                raise ValueError(f"search_space.{key}: low ({dim.low}) must be below high")
        if self.search == "grid":
            ranged = [k for k, d in self.search_space.items() if not isinstance(d, ChoiceDim)]
            if ranged:
                raise ValueError(
                    f"search 'grid' needs choice dimensions only; {ranged} are "
                    "ranges (use search 'random' or 'optuna')"
                )
        return self
