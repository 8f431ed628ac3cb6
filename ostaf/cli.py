"""`ostaf train` and `ostaf generate`: flags come from the config dataclasses."""

from __future__ import annotations

import argparse
import logging
import sys

from ostaf.config import GenerateConfig, TrainConfig
from ostaf.errors import OstafError
from ostaf.flags import add_config_arguments, config_from_args
from ostaf.runtime import tune_cpu_allocator

COMMANDS = {
    "train": (TrainConfig, "learn an attribute of one reference image"),
    "generate": (GenerateConfig, "generate a λ sweep from trained checkpoint(s)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ostaf", description="One-shot attribute-focused personalisation of SD.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (cls, help_text) in COMMANDS.items():
        add_config_arguments(sub.add_parser(name, help=help_text, description=cls.__doc__), cls)
    doctor = sub.add_parser("doctor", help="list the models the pipeline needs and where they were looked for")
    doctor.add_argument("--model", default="tiny", help="the SD weights you intend to use")
    sync = sub.add_parser("sync-tracking", help="send MLflow records kept while the tracking server was away")
    sync.add_argument("--spool", default=None, help="spool folder (default: $OSTAF_MLFLOW_SPOOL or ./mlflow-spool)")
    pre = sub.add_parser("preprocess", help="segment and plan augmentations of one reference (as training does)")
    for flag, kw in {
        "--image": dict(required=True),
        "--attribute": dict(default="appearance"),
        "--out": dict(required=True),
        "--resolution": dict(type=int, default=512),
        "--bank": dict(type=int, default=8),
        "--seed": dict(type=int, default=42),
        "--sam": dict(default="auto"),
        "--segment": dict(action=argparse.BooleanOptionalAction, default=True),
    }.items():
        pre.add_argument(flag, **kw)
    return parser


def run_tool(args: argparse.Namespace) -> int:
    if args.command == "doctor":
        from ostaf.doctor import report

        text, _ = report(args.model)
        print(text)
        return 0
    if args.command == "sync-tracking":
        from ostaf.tracking import spool_dir, sync_spool, tracking_uri

        sent = sync_spool(args.spool)
        total = sum(sent.values())
        print(f"sent {total} record(s) of {len(sent)} run(s) from {args.spool or spool_dir()} to {tracking_uri()}")
        return 0
    from ostaf.preprocess import preprocess
    from ostaf.segment import load_sam

    sam = load_sam(args.sam) if args.segment else None
    result = preprocess(args.image, args.attribute, args.resolution, args.bank, args.seed, sam)
    print(f"preprocessed reference written to {result.save(args.out)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    tune_cpu_allocator()
    try:
        if args.command not in COMMANDS:
            return run_tool(args)
        config = config_from_args(COMMANDS[args.command][0], args)
        if args.command == "train":
            from ostaf.train import train

            result = train(config)
            print(f"trained {result.step} steps ({result.seconds_per_step:.3f} s/step); checkpoint: {result.out}")
        else:
            from ostaf.generate import generate

            results = generate(config)
            print(f"wrote {sum(len(r.images) for r in results)} images and {len(results)} grid(s) to {config.out}")
    except OstafError as err:
        print(f"ostaf {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
