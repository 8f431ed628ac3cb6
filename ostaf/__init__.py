"""OSTAF: one-shot, attribute-focused personalisation of Stable Diffusion.

Public surface: `apply` a checkpoint to a stock pipeline, `train` and `generate`
from a config, and the offsets method itself in `ostaf.offsets`.
"""

from ostaf.checkpoint import apply, load_checkpoint
from ostaf.config import GenerateConfig, TrainConfig
from ostaf.errors import OstafError

__all__ = ["GenerateConfig", "OstafError", "TrainConfig", "apply", "load_checkpoint"]
