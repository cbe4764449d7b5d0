"""The recommenders' networks: what they rank, what they leave out, and that each of
SASRec's objectives learns a simple next-item rule."""

import numpy as np
import pytest
import torch

from rayops.models.recommend import BPR, RecommenderModel, SASRec


def _cycles(rows: int, items: int, length: int, seed: int = 0) -> torch.Tensor:
    """Sequences where item i is always followed by item i + 1 (wrapping round): one
    start each, as training rows ``[user, items...]``."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, items, rows)
    seq = (starts[:, None] + np.arange(length)[None, :]) % items + 1
    return torch.tensor(np.hstack([np.arange(1, rows + 1)[:, None], seq]), dtype=torch.float32)


@pytest.mark.parametrize(
    "objective, negatives", [("softmax", None), ("softmax", 8), ("sampled", None)]
)
def test_each_objective_learns_what_comes_next(objective, negatives):
    torch.manual_seed(0)
    items, history = 30, 6
    net = SASRec(items, 32, history, 5, 1, 1, 0.0, objective, negatives=negatives)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    data = _cycles(256, items, history + 1)
    net.train()
    for _ in range(60):
        optimizer.zero_grad()
        net(data).backward()
        optimizer.step()
    # ranked after the history 3, 4, 5, 6, 7, 8 (slots): 9 comes first
    row = np.zeros((1, 1 + history + 1), dtype=np.float32)
    row[0, 1 : 1 + history] = np.arange(3, 3 + history)
    top = RecommenderModel("sasrec", net).top(row, 5)
    assert top[0, 0] == 3 + history, top


def test_seen_items_and_the_padding_slot_are_never_ranked():
    torch.manual_seed(0)
    net = BPR(4, 10, 8, 3, 10)
    row = np.zeros((1, 1 + 3 + 4), dtype=np.float32)
    row[0, 0] = 2  # the user
    row[0, 4:8] = [1, 5, 6, 9]  # seen
    slots = RecommenderModel("bpr", net).top(row, 10)[0, :10]
    ranked = [int(s) for s in slots if s > 0]
    assert sorted(ranked) == [2, 3, 4, 7, 8, 10]  # six unseen items, then padding
    assert RecommenderModel("bpr", net).reads_user


def test_items_sharing_an_attribute_value_share_its_vector():
    torch.manual_seed(0)
    genre = {"name": "genre", "size": 2, "codes": [0, 1, 1, 2]}
    net = SASRec(3, 8, 4, 2, 1, 1, 0.0, attributes=[genre])
    with torch.no_grad():
        net.items.weight.zero_()
    vectors = net.item_vectors()
    assert torch.equal(vectors[1], vectors[2]) and not torch.equal(vectors[1], vectors[3])
    assert torch.equal(net.item_vectors(torch.tensor([2, 3])), vectors[[2, 3]])
    assert not any("codes" in name for name in net.state_dict())  # not weights
