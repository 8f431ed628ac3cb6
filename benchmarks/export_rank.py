"""How well a LoRA of rank r carries OSTAF's offsets: relative error of the exported ΔW vs rank, side by side.

    python benchmarks/export_rank.py                        # tiny and sd14-random (256 px), decoder offsets
    python benchmarks/export_rank.py --models tiny --steps 2

Each model gets a checkpoint of `--steps` training steps with the authors' random init (ΔW ≠ 0 from
step 0, so a few steps give the offsets' real structure: W ⊙ ΔW, full rank), exported at λ = 1 by
`ostaf export`'s own code; the table is the overall relative Frobenius error per rank and the rank
`--max-error` would pick. Errors do not depend on the reference, so a synthetic image stands in.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "sd14-random"])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=256, help="training resolution of sd14-random")
    parser.add_argument("--max-error", type=float, default=0.1)
    args = parser.parse_args()

    from ostaf.config import ExportConfig, TrainConfig
    from ostaf.export import export
    from ostaf.train import train
    from tests.conftest import synthetic_image

    rows: dict[str, dict[int, float]] = {}
    picked: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "ref.png"
        synthetic_image(256).save(image)
        for model in args.models:
            out = Path(tmp) / model
            config = TrainConfig(
                image=str(image),
                class_name="vase",
                attribute="appearance",
                model=model,
                out=str(out / "ckpt"),
                steps=args.steps,
                lr=1e-3,
                segment=False,
                token_init="word",
                checkpoint_every=0,
                device="cpu",
                resolution=args.resolution if model != "tiny" else 0,
            )
            train(config, progress=False)
            full = export(ExportConfig(ckpt=str(out / "ckpt"), out=str(out / "lora.safetensors")))
            rows[model] = full.error_vs_rank
            bound = ExportConfig(ckpt=str(out / "ckpt"), out=str(out / "p.safetensors"), max_error=args.max_error)
            picked[model] = export(bound).rank
    ranks = sorted({r for errors in rows.values() for r in errors})
    print("| rank | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    for r in ranks:
        print(f"| {r} | " + " | ".join(f"{rows[m][r]:.3g}" if r in rows[m] else "–" for m in rows) + " |")
    print(f"\nrank picked by --max-error {args.max_error}: " + ", ".join(f"{m} {r}" for m, r in picked.items()))


if __name__ == "__main__":
    main()
