"""E4T-style weight offsets: a parameter-only hypernetwork that predicts ΔW for one weight.

Same parameters, names and default initialisation as the authors' code
(e4t `WeightOffsets`, reused as `shapeinv/weightoffsets.py`), so their
checkpoints map onto ours key for key:

    v ∈ R¹ (init 1)           a = linear1(v) ∈ R^in      b = linear2(v) ∈ R^out
    M0 = a bᵀ                 (in, out)    outer product
    M1 = W_c M0 + b_c 1ᵀ      (in, out)    linear_column along the input axis
    M2 = M1 W_rᵀ + 1 b_rᵀ     (in, out)    linear_row along the output axis
    ΔW = M2ᵀ                  (out, in)    the layout of nn.Linear.weight

Because M0 has rank one, ΔW has the closed form
    ΔW = (W_r b)(W_c a)ᵀ + (W_r 1) b_cᵀ + b_r 1ᵀ        (rank ≤ 3)
which we evaluate as one (out, 3) @ (3, in) product instead of two dense
(in×in)·(in×out) and (in×out)·(out×out) products: identical maths, O(in·out)
instead of O(in·out·(in+out)).

W_c (in×in) and W_r (out×out) hold almost all of the parameters (76 M for SD-1.4's decoder).
`rank=R` (`--hyper-rank`) replaces each by low-rank factors U·D (n×R)(R×n) plus its bias: the same
closed form, with W_r b = U_r (D_r b); the default (None) is the authors' full form.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class LowRankLinear(nn.Module):
    """A square n×n map as factors `up` (n×R) · `down` (R×n) plus a bias: W_c or W_r at `--hyper-rank R`.

    Initialised so that up·down has the entry scale of `nn.Linear`'s default weight (variance 1/(3n)).
    """

    def __init__(self, features: int, rank: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(features)
        self.down = nn.Parameter(torch.empty(rank, features).uniform_(-bound, bound))
        self.up = nn.Parameter(torch.randn(features, rank) / math.sqrt(rank))
        self.bias = nn.Parameter(torch.empty(features).uniform_(-bound, bound))

    @property
    def weight(self) -> torch.Tensor:
        """The dense n×n matrix (for inspection; the forward never forms it)."""
        return self.up @ self.down

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """W x (no bias), never forming W."""
        return self.up @ (self.down @ x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """As `nn.Linear`: x Wᵀ + b."""
        return F.linear(F.linear(x, self.down), self.up, self.bias)


def _matmul(layer: nn.Linear | LowRankLinear, x: torch.Tensor) -> torch.Tensor:
    """W x without the bias, for either form of W."""
    return layer.matmul(x) if isinstance(layer, LowRankLinear) else layer.weight @ x


class WeightOffsets(nn.Module):
    """Predicts ΔW of shape (out_features, in_features); it has no input."""

    def __init__(self, in_features: int, out_features: int, zero_init: bool = False, rank: int | None = None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.v = nn.Parameter(torch.ones(1))
        self.linear1 = nn.Linear(1, in_features)
        self.linear2 = nn.Linear(1, out_features)
        if rank is None:  # the authors' form, key for key
            self.linear_column = nn.Linear(in_features, in_features)
            self.linear_row = nn.Linear(out_features, out_features)
        else:
            self.linear_column = LowRankLinear(in_features, rank)
            self.linear_row = LowRankLinear(out_features, rank)
        if zero_init:
            # ΔW = 0 exactly, while linear_row still receives a gradient.
            nn.init.zeros_(self.linear_row.up if rank is not None else self.linear_row.weight)
            nn.init.zeros_(self.linear_row.bias)

    def forward(self) -> torch.Tensor:
        a = self.linear1(self.v)  # (in,)
        b = self.linear2(self.v)  # (out,)
        b_col, b_row = self.linear_column.bias, self.linear_row.bias  # (in,), (out,)
        # W_r b and W_r 1 in one product: W_r (the largest tensor here, out×out) is read once, and
        # its gradient is one (out, 2) @ (2, out) product instead of two outer products and a sum
        row = _matmul(self.linear_row, torch.stack([b, torch.ones_like(b)], dim=1))  # (out, 2) = [W_r b, W_r 1]
        left = torch.cat([row, b_row[:, None]], dim=1)  # (out, 3)
        low_rank = self.rank is not None
        column = self.linear_column.matmul(a) if low_rank else F.linear(a, self.linear_column.weight)  # W_c a
        right = torch.stack([column, b_col, torch.ones_like(b_col)], dim=1)  # (in, 3)
        return left @ right.T  # (out, in)

    def extra_repr(self) -> str:
        rank = "" if self.rank is None else f", rank={self.rank}"
        return f"in_features={self.in_features}, out_features={self.out_features}{rank}"
