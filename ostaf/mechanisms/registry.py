"""The training mechanisms, in the order their hooks run (`ostaf.mechanisms.base` says which hooks).

The order is the order of their context managers around the forward (the token phase's λ = 0 before the
dual path's β, the binding probes innermost), of their loss terms, and of `attach` (the word search last:
it scores words with everything else installed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ostaf.mechanisms.base import BaseModel, Mechanism
from ostaf.mechanisms.binding import AttentionBinding
from ostaf.mechanisms.contrastive import NearestWordTerm
from ostaf.mechanisms.dual_path import DualPathTraining
from ostaf.mechanisms.masked_loss import MaskedLoss
from ostaf.mechanisms.prior import PriorPreservation
from ostaf.mechanisms.schedule import TokenPhases
from ostaf.mechanisms.views import CaptionedViews
from ostaf.mechanisms.word_search import WordSearch

if TYPE_CHECKING:
    from ostaf.config import TrainConfig

REGISTRY: tuple[type[Mechanism], ...] = (
    PriorPreservation,  # first: it draws the base model's class images before anything else exists
    CaptionedViews,  # encodes its views on the base model too
    MaskedLoss,
    TokenPhases,
    DualPathTraining,
    AttentionBinding,
    NearestWordTerm,
    WordSearch,
)


def build_mechanisms(config: TrainConfig, base: BaseModel) -> list[Mechanism]:
    """The mechanisms the config turns on; an off one builds nothing and draws nothing."""
    return [m for m in (kind.build(config, base) for kind in REGISTRY) if m is not None]
