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
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class WeightOffsets(nn.Module):
    """Predicts ΔW of shape (out_features, in_features); it has no input."""

    def __init__(self, in_features: int, out_features: int, zero_init: bool = False) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.v = nn.Parameter(torch.ones(1))
        self.linear1 = nn.Linear(1, in_features)
        self.linear2 = nn.Linear(1, out_features)
        self.linear_column = nn.Linear(in_features, in_features)
        self.linear_row = nn.Linear(out_features, out_features)
        if zero_init:
            # ΔW = 0 exactly, while linear_row still receives a gradient.
            nn.init.zeros_(self.linear_row.weight)
            nn.init.zeros_(self.linear_row.bias)

    def forward(self) -> torch.Tensor:
        a = self.linear1(self.v)  # (in,)
        b = self.linear2(self.v)  # (out,)
        w_col, b_col = self.linear_column.weight, self.linear_column.bias  # (in, in), (in,)
        w_row, b_row = self.linear_row.weight, self.linear_row.bias  # (out, out), (out,)
        # W_r b and W_r 1 in one product: W_r (the largest tensor here, out×out) is read once, and
        # its gradient is one (out, 2) @ (2, out) product instead of two outer products and a sum
        row = w_row @ torch.stack([b, torch.ones_like(b)], dim=1)  # (out, 2) = [W_r b, W_r 1]
        left = torch.cat([row, b_row[:, None]], dim=1)  # (out, 3)
        right = torch.stack([F.linear(a, w_col), b_col, torch.ones_like(b_col)], dim=1)  # (in, 3)
        return left @ right.T  # (out, in)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
