"""Bag-of-words logistic regression: the order-blind baseline every task is measured against."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bag_of_words(ids: Tensor, vocab_size: int) -> Tensor:
    """Token-count features ``[N, vocab_size]`` of padded ids ``[N, L]`` (padding id 0 ignored)."""
    counts = torch.zeros(ids.shape[0], vocab_size)
    counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.float32))
    counts[:, 0] = 0
    return counts


def bow_logistic_regression(
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    vocab_size: int,
    n_classes: int,
    *,
    l2: float = 1e-3,
    steps: int = 100,
) -> float:
    """Test accuracy of an L2-regularised multinomial logistic regression on token counts."""
    x_tr, x_te = bag_of_words(train[0], vocab_size), bag_of_words(test[0], vocab_size)
    w = torch.zeros(vocab_size, n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x_tr @ w + b, train[1]) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return ((x_te @ w + b).argmax(-1) == test[1]).float().mean().item()
