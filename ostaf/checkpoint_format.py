"""The checkpoint format's names and its card reader, without torch: `ostaf.checkpoint` writes and loads the
format; the preflight checks (which must answer before torch loads) read cards through here.

A checkpoint is a folder with two files: `ostaf.json` (the card: what was trained, on which model, with which
options) and `ostaf.safetensors` (the tensors).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ostaf.errors import OstafError

CARD = "ostaf.json"
TENSORS = "ostaf.safetensors"
CHECKPOINT_FORMAT = "ostaf-checkpoint/1"


def checkpoint_card(folder: str | Path) -> dict[str, Any]:
    """The card of an OSTAF checkpoint folder, after checking that both of its files are there."""
    folder = Path(folder)
    card_path, tensor_path = folder / CARD, folder / TENSORS
    if not card_path.is_file() or not tensor_path.is_file():
        raise OstafError(
            f"{folder} is not an OSTAF checkpoint (needs {CARD} and {TENSORS}): pass the --out folder of "
            "`ostaf train` or one of its checkpoints/step-* folders"
        )
    try:
        card = json.loads(card_path.read_text())
    except (ValueError, OSError) as err:
        raise OstafError(f"checkpoint {folder} is damaged ({err}); use another step's checkpoint") from None
    if card.get("format") != CHECKPOINT_FORMAT:
        raise OstafError(f"checkpoint {folder} has format {card.get('format')!r}, this ostaf reads {CHECKPOINT_FORMAT}")
    return card
