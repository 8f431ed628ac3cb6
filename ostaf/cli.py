"""`ostaf train | generate | preprocess | doctor | sync-tracking`: flags come from the config dataclasses."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable

from ostaf.allocator import tune_cpu_allocator
from ostaf.config import DEFAULT_MODEL, ExportConfig, GenerateConfig, TrainConfig
from ostaf.errors import OstafError
from ostaf.flags import add_config_arguments, config_from_args, set_recipe_defaults
from ostaf.preflight import check_generate_inputs, check_train_inputs
from ostaf.recipes import RECIPES, Recipe, layered

# `ostaf preprocess` takes these TrainConfig fields: the same flags, defaults and help as `ostaf train`
PREPROCESS_FIELDS = ("image", "attribute", "model", "out", "resolution", "augment_bank", "seed", "sam", "segment")


RECIPE_HELP = "named recipes' option values as defaults, later ones winning (explicit flags still win): " + "; ".join(
    f"{r.name}: {r.description}" for r in RECIPES.values()
).replace("%", "%%")  # argparse formats help with %


EXPORT_HELP = (
    "The checkpoint's U-Net change at λ as LoRA factors (truncated SVD per targeted projection) and its token "
    "as a textual-inversion embedding: diffusers' load_lora_weights + load_textual_inversion read them."
)


def build_parser(recipe: Recipe | None = None) -> argparse.ArgumentParser:
    """The CLI; with `recipe`, its option values are the defaults of `train` and `generate`."""
    parser = argparse.ArgumentParser(prog="ostaf", description="One-shot attribute-focused personalisation of SD.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="learn an attribute of one reference image", description=TrainConfig.__doc__)
    add_config_arguments(train, TrainConfig)
    generate = sub.add_parser(
        "generate", help="generate a λ sweep from trained checkpoint(s)", description=GenerateConfig.__doc__
    )
    add_config_arguments(generate, GenerateConfig)
    for command, values in ((train, recipe.train if recipe else {}), (generate, recipe.generate if recipe else {})):
        command.add_argument("--recipe", nargs="+", choices=list(RECIPES), help=RECIPE_HELP)
        set_recipe_defaults(command, values)
    export = sub.add_parser(
        "export", help="a checkpoint at one λ as a LoRA file + a textual-inversion embedding", description=EXPORT_HELP
    )
    add_config_arguments(export, ExportConfig)
    pre = sub.add_parser("preprocess", help="segment and plan augmentations of one reference (as training does)")
    add_config_arguments(pre, TrainConfig, only=PREPROCESS_FIELDS, required=("out",))
    doctor = sub.add_parser("doctor", help="list the models the pipeline needs and where they were looked for")
    doctor.add_argument("--model", default=DEFAULT_MODEL, help="the SD weights you intend to use")
    sync = sub.add_parser("sync-tracking", help="send MLflow records kept while the tracking server was away")
    sync.add_argument("--spool", default=None, help="spool folder (default: $OSTAF_MLFLOW_SPOOL or ./mlflow-spool)")
    return parser


def run_train(args: argparse.Namespace) -> None:
    config = config_from_args(TrainConfig, args)
    check_train_inputs(config)  # a typo is answered before torch loads
    from ostaf.train import train

    result = train(config)
    print(f"trained {result.step} steps ({result.seconds_per_step:.3f} s/step); checkpoint: {result.out}")
    if result.nearest_words:
        print(f"nearest vocabulary words of the token: {', '.join(result.nearest_words)}")


def run_generate(args: argparse.Namespace) -> None:
    config = config_from_args(GenerateConfig, args)
    check_generate_inputs(config)
    from ostaf.generate import generate

    results = generate(config)
    print(f"wrote {sum(len(r.images) for r in results)} images and {len(results)} grid(s) to {config.out}")


def run_export(args: argparse.Namespace) -> None:
    from ostaf.export import export

    report = export(config_from_args(ExportConfig, args))
    if not report.lora:
        print(f"a token-only checkpoint (no U-Net change): embedding of {report.token}: {report.embedding}")
        return
    print(f"{'rank':>6} {'error':>8}")
    for rank, error in report.error_vs_rank.items():
        print(f"{rank:>6} {error:>8.2e}{'  ← written' if rank == report.rank else ''}")
    worst = max(report.layers.items(), key=lambda kv: kv[1])
    print(
        f"LoRA (rank {report.rank}, {report.format}, λ = {report.lam:g}, {len(report.layers)} layers, relative error "
        f"{report.error:.2e}, worst {worst[1]:.2e} in {worst[0]}): {report.lora}\n"
        f"embedding of {report.token}: {report.embedding}\n"
        f"diffusers: {how_to_load(report)}"
    )


def how_to_load(report) -> str:
    """The diffusers calls that load the export (SDXL: the embedding's two rows, one per text encoder)."""
    lora = f"pipe.load_lora_weights({report.lora!r}); " if report.lora else ""
    if report.architecture != "sdxl":
        return f"{lora}pipe.load_textual_inversion({report.embedding!r})"
    return (
        f"{lora}e = safetensors.torch.load_file({report.embedding!r}); "
        f"pipe.load_textual_inversion(e['clip_l'], token={report.token!r}, text_encoder=pipe.text_encoder, "
        f"tokenizer=pipe.tokenizer); pipe.load_textual_inversion(e['clip_g'], token={report.token!r}, "
        "text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)"
    )


def run_preprocess(args: argparse.Namespace) -> None:
    from ostaf.model_spec import model_resolution
    from ostaf.preprocess import preprocess_reference

    resolution = args.resolution or model_resolution(args.model)
    sam = args.sam if args.segment else None
    result = preprocess_reference(args.image, args.attribute, resolution, args.augment_bank, args.seed, sam)
    print(f"preprocessed reference written to {result.save(args.out)}")


def run_doctor(args: argparse.Namespace) -> None:
    from ostaf.doctor import report

    text, _ = report(args.model)
    print(text)


def run_sync(args: argparse.Namespace) -> None:
    from ostaf.tracking import spool_dir, sync_spool, tracking_uri

    sent = sync_spool(args.spool)
    where = args.spool or spool_dir()
    print(f"sent {sum(sent.values())} record(s) of {len(sent)} run(s) from {where} to {tracking_uri()}")


# Each command imports what it needs when it runs: `ostaf --help` should not wait for torch.
COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "train": run_train,
    "generate": run_generate,
    "export": run_export,
    "preprocess": run_preprocess,
    "doctor": run_doctor,
    "sync-tracking": run_sync,
}


def recipe_of(argv: list[str] | None) -> Recipe | None:
    """The recipes `--recipe NAME …` names, layered for the run's attribute (`train`'s `--attribute`, or the one
    `generate`'s checkpoints share), read before the real parse (an unknown name is the parser's error)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("command", nargs="?")
    pre.add_argument("--recipe", nargs="+", default=[])
    pre.add_argument("--attribute", default=TrainConfig.attribute)
    pre.add_argument("--ckpt", nargs="+", default=[])
    known, _ = pre.parse_known_args(argv)
    names = [n for n in known.recipe if n in RECIPES]
    attribute = known.attribute if known.command == "train" else checkpoints_attribute(known.ckpt)
    skipped = [n for n in names if not RECIPES[n].applies_to(attribute)]
    if skipped:
        where = f"the {attribute} attribute" if attribute else "checkpoints of several attributes"
        logging.getLogger(__name__).info(
            "recipe %s is for %s only: not used for %s",
            ", ".join(skipped),
            "/".join(RECIPES[skipped[0]].attributes),
            where,
        )
    return layered(names, attribute)


def checkpoints_attribute(ckpts: list[str]) -> str | None:
    """The attribute every checkpoint's card names (None for none, several, or a card that cannot be read: the
    real run says what is wrong with it)."""
    from ostaf.checkpoint_format import checkpoint_card

    try:
        found = {checkpoint_card(c).get("attribute") for c in ckpts}
    except OstafError:
        return None
    return found.pop() if len(found) == 1 else None


def from_recipe(message: str, recipe: Recipe | None, argv: list[str] | None = None) -> str:
    """`message`, saying which flags it names came from the recipe (those the user did not type in `argv`)."""
    if recipe is None:
        return message
    typed = {arg.split("=")[0] for arg in argv or sys.argv[1:] if arg.startswith("--")}
    options = {**recipe.train, **recipe.generate, **recipe.evaluate}
    flags = ("--" + name.replace("_", "-") for name in options)
    named = [flag for flag in flags if flag not in typed and re.search(re.escape(flag) + r"(?![\w-])", message)]
    return f"{message} ({', '.join(named)}: set by --recipe {recipe.name})" if named else message


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    recipe = recipe_of(argv)
    args = build_parser(recipe).parse_args(argv)
    tune_cpu_allocator()
    try:
        COMMANDS[args.command](args)
    except OstafError as err:
        print(f"ostaf {args.command}: error: {from_recipe(str(err), recipe, argv)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
