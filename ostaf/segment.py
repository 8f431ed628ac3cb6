"""Foreground masks with Segment Anything, prompted by a fixed, documented rule.

The rule (`foreground_mask`): one box covering the central 90 % of the image plus
one positive point at its centre — benchmark references show one centred
object — with `multimask_output=True`; of SAM's three candidate masks the one
with the highest predicted IoU wins. Weights come from a local file only
(``OSTAF_SAM_WEIGHTS``, loaded with `torch.load(weights_only=True)` or
safetensors); the ``tiny`` model is the same `Sam` class, small and random.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ostaf.errors import OstafError
from ostaf.runtime import seeded

SAM_WEIGHTS_ENV = "OSTAF_SAM_WEIGHTS"
SAM_ARCHS = ("vit_b", "vit_l", "vit_h")
BOX_MARGIN = 0.05  # the box leaves 5 % of each side out


def build_tiny_sam(seed: int = 0):
    """A few-MB random `Sam` with SAM's real prompt/decoder interfaces, for tests and `--sam tiny`."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    with seeded(seed):
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=1024,
                patch_size=16,
                embed_dim=32,
                depth=2,
                num_heads=2,
                out_chans=32,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                window_size=14,
                global_attn_indexes=(1,),
                use_rel_pos=True,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=32, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=4
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer_dim=32,
                iou_head_hidden_dim=32,
                transformer=TwoWayTransformer(depth=1, embedding_dim=32, mlp_dim=64, num_heads=2),
            ),
        )
    return sam.eval()


def sam_weights_path() -> Path | None:
    value = os.environ.get(SAM_WEIGHTS_ENV)
    return Path(value).expanduser() if value else None


def load_sam(spec: str = "auto"):
    """`tiny`, `random-vit_b|l|h` (architecture only), a weights file, or `auto` (``OSTAF_SAM_WEIGHTS``)."""
    from segment_anything import sam_model_registry

    if spec == "tiny":
        return build_tiny_sam()
    if spec.startswith("random-") and spec.removeprefix("random-") in SAM_ARCHS:
        return sam_model_registry[spec.removeprefix("random-")]().eval()
    path = sam_weights_path() if spec == "auto" else Path(spec).expanduser()
    if path is None or not path.is_file():
        raise OstafError(
            f"SAM weights not found ({path or 'set ' + SAM_WEIGHTS_ENV}): put a segment-anything checkpoint such as "
            f"sam_vit_b_01ec64.pth on disk and set {SAM_WEIGHTS_ENV}=/path/to/it, or skip SAM with --no-segment"
        )
    arch = next((a for a in SAM_ARCHS if a in path.name), "vit_h")
    sam = sam_model_registry[arch]()
    sam.load_state_dict(load_weights(path))
    return sam.eval()


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a torch file with `weights_only=True` (no pickled code)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise OstafError(
            f"cannot load weights {path} safely ({err.__class__.__name__}); use a safetensors file"
        ) from None


@torch.no_grad()
def foreground_mask(image: Image.Image, sam) -> np.ndarray:
    """Boolean (H, W) mask of the reference's main object, by the rule in this module's docstring."""
    from segment_anything import SamPredictor

    predictor = SamPredictor(sam)
    predictor.set_image(np.asarray(image.convert("RGB")))
    w, h = image.size
    box = np.array([BOX_MARGIN * w, BOX_MARGIN * h, (1 - BOX_MARGIN) * w, (1 - BOX_MARGIN) * h])
    masks, scores, _ = predictor.predict(
        point_coords=np.array([[w / 2, h / 2]]), point_labels=np.array([1]), box=box, multimask_output=True
    )
    return masks[int(np.argmax(scores))].astype(bool)
