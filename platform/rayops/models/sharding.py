"""An embedding table sharded by rows across the DDP workers (item-parallel, as Megatron
shards a vocabulary): each worker holds ``ceil(rows / workers)`` rows, their gradients and
their optimizer state, so a catalogue whose training state (weights, gradients and AdamW's
two moments: 16 bytes a float) does not fit one worker is spread over all of them.

- A lookup (:meth:`ShardedTable.forward`) gathers every worker's slots, each worker fills
  the rows it holds, and one all-reduce gives every worker its vectors.
- The cross-entropy over the whole catalogue (:meth:`ShardedTable.cross_entropy`) never
  builds a row of every item's score on one worker: each scores every worker's states
  against its own rows, and the softmax's maximum, normaliser and target score are
  all-reduced (three numbers a row).
- The gradient of the table is the mean of the workers' losses' gradients, as DDP gives the
  replicated parameters (DDP is told to leave the table alone: :func:`ignore_in_ddp`).
- Validation, checkpoints and the trained model hold the table whole: :meth:`train` with
  ``False`` gathers it (weights only, a quarter of the training state); a checkpoint's
  ``{name}.weight`` and its optimizer moments are whole tables
  (:func:`gathered_optimizer_state`), so a run resumes on any number of workers and the
  served model is the unsharded network's.

Every worker must call a lookup, a cross-entropy and :meth:`train` in step, as DDP's own
all-reduce requires (each worker trains on as many batches).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def sharding_world() -> tuple[int, int]:
    """(rank, world size) of the training workers; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_rows(x: torch.Tensor, world: int) -> tuple[torch.Tensor, int]:
    """Every worker's ``x`` stacked, each padded with zeros to the longest (``world *
    longest`` rows), and the longest."""
    length = torch.tensor([len(x)], device=x.device)
    dist.all_reduce(length, op=dist.ReduceOp.MAX)
    longest = int(length)
    padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: len(x)] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat(parts), longest


class _SumOverWorkers(torch.autograd.Function):
    """The sum of every worker's tensor; its gradient, the sum of every worker's."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        total = x.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        return total


class _ShardedCrossEntropy(torch.autograd.Function):
    """Each row's cross-entropy over every slot ``1..rows-1`` of a sharded table, for this
    worker's rows; scores are computed in float32."""

    @staticmethod
    def forward(
        ctx: Any,
        states: torch.Tensor,
        targets: torch.Tensor,
        vectors: torch.Tensor,
        table: ShardedTable,
    ) -> torch.Tensor:
        with torch.autocast(states.device.type, enabled=False):
            every, longest = _gather_rows(states.float(), table.world)
            goals, _ = _gather_rows(targets.long(), table.world)
            weights = vectors.float()
            logits = every @ weights.T
            logits[:, ~table.valid] = -torch.inf
            top = logits.max(dim=1).values
            dist.all_reduce(top, op=dist.ReduceOp.MAX)
            exp = (logits - top[:, None]).exp()
            total = exp.sum(dim=1)
            dist.all_reduce(total)
            mine = (goals >= table.lo) & (goals < table.lo + table.per) & (goals >= table.first)
            local = (goals - table.lo).clamp(0, table.per - 1)
            picked = torch.where(
                mine, logits.gather(1, local[:, None]).squeeze(1), torch.zeros_like(top)
            )
            dist.all_reduce(picked)
            losses = total.log() + top - picked
        ctx.save_for_backward(every, weights, exp / total[:, None], mine, local)
        ctx.table, ctx.longest, ctx.rows = table, longest, len(states)
        ctx.dtypes = (states.dtype, vectors.dtype)
        start = table.rank * longest
        return losses[start : start + len(states)]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        every, weights, softmax, mine, local = ctx.saved_tensors
        table: ShardedTable = ctx.table
        with torch.autocast(every.device.type, enabled=False):
            grads, _ = _gather_rows(grad.float(), table.world)  # every worker's rows' weights
            g = softmax * grads[:, None]
            rows = mine.nonzero().squeeze(1)
            g[rows, local[rows]] -= grads[rows]
            grad_vectors = g.T @ every
            grad_states = g @ weights
            dist.all_reduce(grad_states)
        start = table.rank * ctx.longest
        own = grad_states[start : start + ctx.rows]
        return own.to(ctx.dtypes[0]), None, grad_vectors.to(ctx.dtypes[1]), None


class ShardedTable(nn.Module):
    """Rows ``[lo, lo + per)`` of a ``rows x dim`` table; with ``padding``, row 0 is the
    padding (always zero)."""

    def __init__(
        self,
        rows: int,
        dim: int,
        std: float,
        rank: int,
        world: int,
        padding: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.rows, self.embedding_dim, self.rank, self.world = rows, dim, rank, world
        self.first = 1 if padding else 0  # the first row a lookup or a score reads
        self.per = math.ceil(rows / world)
        self.lo = rank * self.per
        generator = torch.Generator().manual_seed(seed * 7919 + rank)
        self.shard = nn.Parameter(torch.randn(self.per, dim, generator=generator) * std)
        slots = torch.arange(self.lo, self.lo + self.per)
        self.register_buffer("valid", (slots >= self.first) & (slots < rows), persistent=False)
        with torch.no_grad():
            self.shard[~self.valid] = 0.0
        # The workers' losses' summed gradient, made their mean (what DDP gives the rest).
        self.shard.register_hook(lambda grad: grad / self.world)
        self.full: torch.Tensor | None = None  # the whole table, gathered for validation
        self.register_state_dict_post_hook(_whole_table)
        self.register_load_state_dict_pre_hook(_own_rows)

    def extra_repr(self) -> str:
        return (
            f"rows={self.rows}, dim={self.embedding_dim}, rows {self.lo}.."
            f"{min(self.lo + self.per, self.rows) - 1} of {self.world} workers'"
        )

    def own(self, whole: torch.Tensor) -> torch.Tensor:
        """This worker's rows of a whole table (padded past the last row)."""
        part = whole[self.lo : self.lo + self.per]
        if len(part) < self.per:
            pad = torch.zeros(
                (self.per - len(part), *whole.shape[1:]), dtype=whole.dtype, device=whole.device
            )
            part = torch.cat([part, pad])
        return part

    @torch.no_grad()
    def gather(self, shard: torch.Tensor | None = None) -> torch.Tensor:
        """The whole table (or the whole of a tensor shaped like the shard: an optimizer
        moment), on every worker."""
        part = (self.shard if shard is None else shard).detach().contiguous()
        parts = [torch.empty_like(part) for _ in range(self.world)]
        dist.all_gather(parts, part)
        return torch.cat(parts)[: self.rows]

    def train(self, mode: bool = True) -> ShardedTable:
        self.full = None if mode else self.gather()
        return super().train(mode)

    @property
    def weight(self) -> torch.Tensor:
        """The whole table: only between :meth:`train` ``(False)`` and the next training."""
        if self.full is None:
            raise RuntimeError("a sharded table is whole only after .eval() on every worker")
        return self.full

    def forward(self, slots: torch.Tensor) -> torch.Tensor:
        """The vectors of ``slots`` (any shape; 0, the padding, is a zero vector)."""
        if self.full is not None:
            return nn.functional.embedding(slots, self.full)
        flat = slots.reshape(-1).long()
        every, longest = _gather_rows(flat, self.world)
        mine = (every >= self.lo) & (every < self.lo + self.per) & (every >= self.first)
        local = self.shard[(every - self.lo).clamp(0, self.per - 1)] * mine[:, None]
        vectors = _SumOverWorkers.apply(local)
        start = self.rank * longest
        return vectors[start : start + len(flat)].reshape(*slots.shape, self.embedding_dim)

    def cross_entropy(
        self, states: torch.Tensor, targets: torch.Tensor, vectors: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The mean cross-entropy of each state's target slot among every slot of the
        table; ``vectors``: this worker's rows as the scores read them (the shard plus
        what item attributes add; the shard itself by default)."""
        losses = _ShardedCrossEntropy.apply(
            states, targets, self.shard if vectors is None else vectors, self
        )
        return losses.mean()


def _whole_table(
    module: ShardedTable, state: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    """A state dict holds the whole table as ``{prefix}weight`` (the unsharded network's
    key), gathered by the last :meth:`ShardedTable.train` ``(False)``."""
    state.pop(prefix + "shard")
    state[prefix + "weight"] = module.weight.detach().clone()


def _own_rows(module: ShardedTable, state: dict[str, Any], prefix: str, *args: Any) -> None:
    """Loading a whole table (a checkpoint, from any number of workers) keeps this
    worker's rows."""
    whole = state.pop(prefix + "weight", None)
    if whole is not None:
        state[prefix + "shard"] = module.own(whole)


def sharded_tables(model: nn.Module) -> Iterator[tuple[str, ShardedTable]]:
    for name, module in model.named_modules():
        if isinstance(module, ShardedTable):
            yield name, module


def ignore_in_ddp(network: nn.Module) -> None:
    """Keep DDP off the sharded tables (their rows and which of them are real): no
    broadcast from rank 0, no gradient averaging."""
    names = [f"{name}.{part}" for name, _ in sharded_tables(network) for part in ("shard", "valid")]
    if names:
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            network, names
        )


def _moments(optimizer: torch.optim.Optimizer) -> dict[int, int]:
    """The optimizer state dict's index of each parameter."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {id(p): i for i, p in enumerate(params)}


def gathered_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state dict with each sharded table's moments whole (every worker
    calls it; each gets the same)."""
    state = optimizer.state_dict()
    index = _moments(optimizer)
    for _, table in sharded_tables(model):
        at = index[id(table.shard)]
        if at in state["state"]:  # a copy: the live state stays this worker's rows
            state["state"][at] = {
                key: table.gather(value)
                if torch.is_tensor(value) and value.shape == table.shard.shape
                else value
                for key, value in state["state"][at].items()
            }
    return state


def own_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> dict[str, Any]:
    """A checkpoint's optimizer state with each sharded table's whole moments cut to this
    worker's rows."""
    index = _moments(optimizer)
    for _, table in sharded_tables(model):
        slot = state["state"].get(index[id(table.shard)])
        for key, value in list((slot or {}).items()):
            if torch.is_tensor(value) and value.dim() == 2 and len(value) == table.rows:
                slot[key] = table.own(value)
    return state
