"""The three attributes OSTAF learns, with their placeholder tokens and U-Net parts."""

from __future__ import annotations

from dataclasses import dataclass

from ostaf.errors import OstafError


@dataclass(frozen=True)
class Attribute:
    """`word` is the attribute's own English word: it names the phrase and seeds the token."""

    name: str
    token: str
    word: str
    part: str  # "encoder" (down blocks) learns structure, "decoder" (up blocks) learns appearance

    def phrase(self) -> str:
        return f"in the {self.word} of {self.token}"

    def training_prompt(self, class_name: str) -> str:
        """The prompt of every training step: ``a {class} in the {attribute} of {token}``."""
        return f"a {class_name} {self.phrase()}"


ATTRIBUTES: dict[str, Attribute] = {
    "shape": Attribute("shape", "*m", "shape", "encoder"),
    "appearance": Attribute("appearance", "*a", "appearance", "decoder"),
    "style": Attribute("style", "*s", "style", "decoder"),
}
PLACEHOLDERS = tuple(a.token for a in ATTRIBUTES.values())


def get_attribute(name: str) -> Attribute:
    try:
        return ATTRIBUTES[name]
    except KeyError:
        raise OstafError(f"unknown attribute {name!r}: use one of {', '.join(ATTRIBUTES)}") from None


def placeholders_in(prompt: str) -> list[str]:
    """The placeholder tokens a prompt uses, in the order of `PLACEHOLDERS`."""
    return [t for t in PLACEHOLDERS if t in prompt]


def check_prompt(prompt: str, available: list[str]) -> None:
    """A generation prompt must use at least one learned placeholder, and only learned ones."""
    used = placeholders_in(prompt)
    if not used:
        raise OstafError(
            f"prompt {prompt!r} has no placeholder: write one of {', '.join(available)} where the learned "
            f"attribute goes, e.g. 'a vase {ATTRIBUTES['appearance'].phrase()}'"
        )
    foreign = [t for t in used if t not in available]
    if foreign:
        raise OstafError(
            f"prompt {prompt!r} uses {', '.join(foreign)} but the loaded checkpoints learned only "
            f"{', '.join(available)}: load a checkpoint of that attribute too (--ckpt A --ckpt B)"
        )
