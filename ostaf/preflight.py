"""What `train` and `generate` can refuse without torch: checked before seconds of imports and model loading.

A missing image, a checkpoint folder without its files, a prompt without the placeholder or an
output path that cannot be written are a user's typo; the answer should come in a fraction of a
second, not after torch and diffusers have loaded. The library's `train` / `generate` run the same
checks first, so the Python API and the pipeline's steps answer the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ostaf.attributes import check_prompt
from ostaf.checkpoint_format import checkpoint_card
from ostaf.images import load_image
from ostaf.io import check_output_dir
from ostaf.model_spec import check_model_location

if TYPE_CHECKING:
    from ostaf.config import GenerateConfig, TrainConfig


def _check_image_or_folder(path: str) -> None:
    """An image file, or a folder written by `ostaf preprocess`."""
    if Path(path).is_dir():
        from ostaf.preprocess import load_preprocessed

        load_preprocessed(path)
    else:
        load_image(path)


def check_train_inputs(config: TrainConfig) -> None:
    check_output_dir(config.out)  # before minutes of work, not at the first save
    _check_image_or_folder(config.image)
    check_model_location(config.model)


def check_generate_inputs(config: GenerateConfig) -> None:
    check_output_dir(config.out)
    tokens = [checkpoint_card(folder)["token"] for folder in config.ckpt]
    if tokens:
        for prompt in config.prompt:
            check_prompt(prompt, tokens)
    if config.reference_attention > 0 and config.reference_image:  # read only then (an image or a folder)
        _check_image_or_folder(config.reference_image)
    if config.model:
        check_model_location(config.model)
