"""Recommenders: networks over user and item slots, trained with DDP by the same loop as
the MLP (:mod:`rayops.models.torch_loop`), each computing its own loss.

- ``bpr``: matrix factorization (a user embedding against every item's embedding and bias)
  trained with the BPR loss, one uniformly drawn negative per positive (Rendle et al.
  2009): the plain baseline.
- ``sasrec``: self-attention over the user's recent items (Kang & McAuley 2018), causal,
  trained to predict each next item with cross-entropy over the whole catalogue (the
  loss Klenitskiy & Vasilev 2023 found to beat sampled negatives); it reads no user id,
  so a new user's recent items are enough.

With ``shard_tables`` (and more than one worker) the item table, and BPR's user table, are
split by rows across the training workers (:mod:`rayops.models.sharding`).

Both score every item slot for a user and rank them with the user's seen items (and the
padding slot) left out: :func:`top_k` gives the ``k`` best slots, then their scores, the
task's outputs. Input rows are the examples of :mod:`rayops.data.interactions`:
``[user, sequence of history + 1]`` in training, ``[user, history, seen...]`` otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rayops.families import BUILT_IN_TASKS, register_family
from rayops.models.family import LoopConfig
from rayops.models.mlp import WEIGHTS, MLPFamily
from rayops.models.sharding import ShardedTable, sharding_world

if TYPE_CHECKING:
    from rayops.config import PipelineConfig

# Rows scored at once when ranking: keeps the score matrix near 64 Mi floats (256 MiB).
SCORE_CELLS = 1 << 26
# Training state of an embedding's float: the weight, its gradient and AdamW's two moments.
TRAINING_BYTES_PER_FLOAT = 16


def table(rows: int, dim: int, shard: bool, padding: bool = True) -> nn.Module:
    """A ``rows x dim`` embedding (row 0 the padding, zero), initialised N(0, 1/dim):
    sharded by rows across the training workers with ``shard`` (and more than one
    worker; see :mod:`rayops.models.sharding`), whole otherwise."""
    std = dim**-0.5
    rank, world = sharding_world()
    if shard and world > 1:
        return ShardedTable(rows, dim, std, rank, world, padding, seed=torch.initial_seed())
    whole = nn.Embedding(rows, dim, padding_idx=0 if padding else None)
    nn.init.normal_(whole.weight, std=std)
    if padding:
        with torch.no_grad():
            whole.weight[0].zero_()
    return whole


def masked(scores: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """Scores with the padding slot and each row's seen slots at -inf."""
    scores = scores.float().clone()
    scores[:, 0] = -torch.inf
    return scores.scatter_(1, seen.long(), -torch.inf)


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``[slots of the k best, their scores]`` per row (fewer unseen items than k: the
    rest is slot 0 at -inf)."""
    k_here = min(k, scores.shape[1])
    best = torch.topk(scores, k_here, dim=1)
    values = best.values
    slots = torch.where(torch.isfinite(values), best.indices, 0).float()  # none left: 0
    if k_here < k:
        pad = k - k_here
        slots = F.pad(slots, (0, pad))
        values = F.pad(values, (0, pad), value=-torch.inf)
    return torch.cat([slots, values], dim=1)


class Recommender(nn.Module):
    """What both networks share: the catalogue's embeddings and ranking."""

    def __init__(
        self,
        n_items: int,
        dim: int,
        history: int,
        k: int,
        attributes: list[dict[str, Any]] | None = None,
        user_attributes: list[dict[str, Any]] | None = None,
        shard: bool = False,
    ) -> None:
        super().__init__()
        self.n_items, self.history, self.k = n_items, history, k
        self.items = table(n_items + 1, dim, shard)
        # Each attribute's value (a genre, a decade) has a vector added to its items' (its
        # users') own; the codes come with the architecture: no part of the weights.
        self.attributes = self._tables("codes", attributes or [], dim)
        self.user_attributes = self._tables("user_codes", user_attributes or [], dim)

    def _tables(self, prefix: str, attributes: list[dict[str, Any]], dim: int) -> nn.ModuleList:
        tables = nn.ModuleList(nn.Embedding(a["size"] + 1, dim, padding_idx=0) for a in attributes)
        for i, (table, a) in enumerate(zip(tables, attributes, strict=True)):
            nn.init.normal_(table.weight, std=dim**-0.5)
            with torch.no_grad():
                table.weight[0].zero_()
            self.register_buffer(
                f"{prefix}_{i}", torch.tensor(a["codes"], dtype=torch.long), persistent=False
            )
        return tables

    def item_vectors(self, slots: torch.Tensor | None = None) -> torch.Tensor:
        """The vectors of ``slots`` (None: every slot): each item's own, plus its
        attributes' values'."""
        if slots is None:
            vectors = self.items.weight
            for i, table in enumerate(self.attributes):
                vectors = vectors + table(getattr(self, f"codes_{i}"))
            return vectors
        vectors = self.items(slots)
        for i, table in enumerate(self.attributes):
            vectors = vectors + table(getattr(self, f"codes_{i}")[slots])
        return vectors

    def shard_vectors(self) -> torch.Tensor:
        """A sharded item table's rows on this worker as the scores read them (their own
        vectors plus their attributes')."""
        items = self.items
        assert isinstance(items, ShardedTable)
        vectors = items.shard
        for i, attribute in enumerate(self.attributes):
            vectors = vectors + attribute(items.own(getattr(self, f"codes_{i}")))
        return vectors

    @property
    def sharded(self) -> bool:
        return isinstance(self.items, ShardedTable)

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor | float:
        """What the users' attributes add (0 without a user table)."""
        extra: torch.Tensor | float = 0.0
        for i, table in enumerate(self.user_attributes):
            extra = extra + table(getattr(self, f"user_codes_{i}")[users])
        return extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training: the mean loss of the batch's sequences. Otherwise: every item slot's
        score with the seen ones at -inf."""
        if self.training:
            return self.loss(x[:, 0].long(), x[:, 1:].long())
        history = x[:, 1 : 1 + self.history].long()
        return masked(self.scores(x[:, 0].long(), history), x[:, 1 + self.history :])

    def loss(self, users: torch.Tensor, sequences: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class BPR(Recommender):
    """Matrix factorization with the BPR loss."""

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int,
        history: int,
        k: int,
        attributes: list[dict[str, Any]] | None = None,
        user_attributes: list[dict[str, Any]] | None = None,
        shard: bool = False,
    ) -> None:
        super().__init__(n_items, dim, history, k, attributes, user_attributes, shard)
        self.users = table(n_users + 1, dim, shard, padding=False)
        self.bias = nn.Embedding(n_items + 1, 1)
        nn.init.zeros_(self.bias.weight)

    def _score(
        self, users: torch.Tensor, items: torch.Tensor, vectors: torch.Tensor
    ) -> torch.Tensor:
        person = self.users(users) + self.user_vectors(users)
        return (person * vectors).sum(-1) + self.bias(items).squeeze(-1)

    def loss(self, users: torch.Tensor, sequences: torch.Tensor) -> torch.Tensor:
        """Every positive of the sequence against a uniformly drawn item."""
        positive = sequences > 0
        who = users[:, None].expand_as(sequences)[positive]
        liked = sequences[positive]
        other = torch.randint(1, self.n_items + 1, liked.shape, device=liked.device)
        return -F.logsigmoid(
            self._score(who, liked, self.item_vectors(liked))
            - self._score(who, other, self.item_vectors(other))
        ).mean()

    def scores(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        person = self.users(users) + self.user_vectors(users)
        return person @ self.item_vectors().T + self.bias.weight.T


class SASRec(Recommender):
    """Causal self-attention over the recent items; the last position scores the next."""

    def __init__(
        self,
        n_items: int,
        dim: int,
        history: int,
        k: int,
        blocks: int,
        heads: int,
        dropout: float,
        objective: str = "softmax",
        attributes: list[dict[str, Any]] | None = None,
        user_attributes: list[dict[str, Any]] | None = None,
        negatives: int | None = None,
        shard: bool = False,
    ) -> None:
        super().__init__(n_items, dim, history, k, attributes, user_attributes, shard)
        self.objective, self.negatives = objective, negatives
        self.positions = nn.Embedding(history, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=dim * 2, dropout=dropout, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        """Hidden states of left-padded item sequences (``[rows, steps, dim]``)."""
        steps = items.shape[1]
        at = torch.arange(self.history - steps, self.history, device=items.device)
        h = self.item_vectors(items) * self.items.embedding_dim**0.5 + self.positions(at)
        h = self.dropout(h) * (items > 0).unsqueeze(-1)
        causal = nn.Transformer.generate_square_subsequent_mask(steps, device=items.device)
        return self.norm(self.blocks(h, mask=causal, is_causal=True))

    def loss(self, users: torch.Tensor, sequences: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of each next item over the catalogue, where an item precedes it."""
        inputs, targets = sequences[:, :-1], sequences[:, 1:]
        person = self.user_vectors(users)
        h = self.encode(inputs) + (person[:, None, :] if isinstance(person, torch.Tensor) else 0.0)
        keep = (inputs > 0) & (targets > 0)
        state, liked = h[keep], targets[keep]
        if self.objective == "sampled":  # the original SASRec: one random negative each
            other = torch.randint(1, self.n_items + 1, liked.shape, device=liked.device)
            good = (state * self.item_vectors(liked)).sum(-1)
            bad = (state * self.item_vectors(other)).sum(-1)
            return -(F.logsigmoid(good) + F.logsigmoid(-bad)).mean()
        if self.negatives:
            return self._sampled_softmax(state, liked)
        if self.sharded:  # the catalogue's scores spread over the workers holding it
            return self.items.cross_entropy(state, liked, self.shard_vectors())
        logits = state @ self.item_vectors().T
        logits[:, 0] = -torch.inf
        return F.cross_entropy(logits, liked)

    def _sampled_softmax(self, state: torch.Tensor, liked: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of each next item among the batch's next items (drawn as often as
        they are popular) and ``negatives`` random items, each score less the log of how
        often its item was drawn (the logQ correction: a popular item is not penalised
        merely for being in many batches)."""
        assert self.negatives is not None
        batch, seen = torch.unique(liked, return_counts=True)
        uniform = torch.randint(1, self.n_items + 1, (self.negatives,), device=liked.device)
        candidates = torch.cat([batch, uniform])
        # how often each candidate is expected among the draws: its next-item count in the
        # batch, plus what the uniform draws give every item
        expected = torch.cat([seen.float(), torch.zeros(self.negatives, device=liked.device)])
        expected += self.negatives / self.n_items
        logits = state @ self.item_vectors(candidates).T - torch.log(expected)
        target = torch.searchsorted(batch, liked)
        # a random draw of a row's own next item is not a negative of it
        logits[:, len(batch) :] = logits[:, len(batch) :].masked_fill(
            uniform[None, :] == liked[:, None], -torch.inf
        )
        return F.cross_entropy(logits, target)

    def scores(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return (self.encode(history)[:, -1] + self.user_vectors(users)) @ self.item_vectors().T


def build_network(spec: dict[str, Any]) -> Recommender:
    """A network from the ``architecture`` dict stored in bundles and checkpoints."""
    attributes = spec.get("attributes") or []
    users = spec.get("user_attributes") or []
    shard = bool(spec.get("shard_tables"))
    if spec["family"] == "bpr":
        return BPR(
            spec["n_users"],
            spec["n_items"],
            spec["dim"],
            spec["history"],
            spec["k"],
            attributes,
            users,
            shard,
        )
    return SASRec(
        spec["n_items"],
        spec["dim"],
        spec["history"],
        spec["k"],
        spec["blocks"],
        spec["heads"],
        spec["dropout"],
        spec.get("objective", "softmax"),
        attributes,
        users,
        spec.get("negatives"),
        shard,
    )


def shards_tables(cfg: PipelineConfig, rows: int) -> bool:
    """Whether training shards the embedding tables (``rows`` in all) across its workers:
    always, never, or (auto) when their training state is over
    ``model.recommender.shard_above_mb``."""
    m = cfg.model.recommender
    if cfg.train.num_workers < 2 or m.shard_tables is False:
        return False
    if m.shard_tables is True:
        return True
    return rows * m.dim * TRAINING_BYTES_PER_FLOAT > m.shard_above_mb * 2**20


def rank_batches(network: Recommender, x: torch.Tensor, k: int) -> torch.Tensor:
    """:func:`top_k` of every row, scored a few rows at a time (a large catalogue)."""
    rows = max(1, SCORE_CELLS // max(network.n_items, 1))
    return (
        torch.cat([top_k(network(x[i : i + rows]), k) for i in range(0, len(x), rows)])
        if len(x)
        else torch.zeros((0, 2 * k))
    )


class RankingObjective:
    """How the loop trains and scores a recommender: the network's own loss; on
    validation, the cross-entropy of the held-out item among the unseen ones and the
    top-k slots the task's metrics read."""

    def __init__(self, k: int) -> None:
        self.k = k

    def train_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return model(x)

    def evaluate(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, float]:
        k = self.k
        network = getattr(model, "module", model)  # DDP's wrapped network
        rows = max(1, SCORE_CELLS // max(network.n_items, 1))
        outputs, loss = [], 0.0
        for at in range(0, len(x), rows):
            scores = model(x[at : at + rows])
            target = y[at : at + rows, 0].long()
            known = target > 0
            if known.any():
                loss += float(F.cross_entropy(scores[known], target[known], reduction="sum"))
            outputs.append(top_k(scores, k))
        return torch.cat(outputs) if outputs else torch.zeros((0, 2 * k)), loss


class RecommenderModel:
    """A trained recommender as a :class:`rayops.models.family.Model`: its outputs are the
    top-k slots and scores of each input row."""

    def __init__(self, family: str, network: Recommender) -> None:
        self.family = family
        self.network = network.eval()

    def save(self, folder: Path) -> None:
        torch.save(self.network.state_dict(), folder / WEIGHTS)

    @property
    def reads_user(self) -> bool:
        """Whether it ranks by the user's id (a user it never saw cannot be ranked)."""
        return isinstance(self.network, BPR)

    @torch.inference_mode()
    def outputs(self, x: np.ndarray, probabilities: bool) -> np.ndarray:
        return self.top(x, self.network.k)

    @torch.inference_mode()
    def top(self, x: np.ndarray, k: int) -> np.ndarray:
        """The top ``k`` slots, then their scores, of each input row."""
        return rank_batches(self.network, torch.from_numpy(x), k).numpy()


class RecommenderFamily(MLPFamily):
    """A recommender trained by the MLP's loop (its objective: :class:`RankingObjective`);
    its length, trainer, history and weights files are the MLP's."""

    tasks = BUILT_IN_TASKS["sasrec"]

    def architecture(
        self, cfg: PipelineConfig, n_inputs: int, n_outputs: int, features: list[dict[str, Any]]
    ) -> dict[str, Any]:
        r, m = cfg.data.recommend, cfg.model.recommender
        assert r is not None
        ids = {f["name"]: f for f in features if f["kind"] == "id"}

        def attributes(column: str) -> list[dict[str, Any]]:
            return [
                {k: a[k] for k in ("name", "size", "codes")}
                for a in ids[column].get("attributes", [])
            ]

        # the item table, and BPR's user table (SASRec reads no user id)
        tables = ids[r.item]["ids"] + 1 + (ids[r.user]["ids"] + 1 if self.name == "bpr" else 0)
        return {
            "family": self.name,
            "n_users": ids[r.user]["ids"],
            "n_items": ids[r.item]["ids"],
            "attributes": attributes(r.item),
            "user_attributes": attributes(r.user),
            "history": r.history,
            "k": r.k,
            "dim": m.dim,
            "blocks": m.blocks,
            "heads": m.heads,
            "dropout": m.dropout,
            "objective": m.objective,
            "negatives": m.negatives,
            "shard_tables": shards_tables(cfg, tables),
        }

    def network(self, architecture: dict[str, Any]) -> nn.Module:
        return build_network(architecture)

    def objective(self, loop: LoopConfig) -> RankingObjective:
        return RankingObjective(int(loop.label_state["k"]))

    def wrap(self, network: nn.Module) -> RecommenderModel:
        return RecommenderModel(self.name, network)


class BPRFamily(RecommenderFamily):
    name = "bpr"


class SASRecFamily(RecommenderFamily):
    name = "sasrec"


register_family(BPRFamily())
register_family(SASRecFamily())
