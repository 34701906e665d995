"""Command-line entry points: `train_mlm.py` / `mlm-train` and `finetune.py` / `mlm-finetune`.

A user mistake (mlm.errors.UserError) prints one line on stderr and exits with code 2.
"""
from __future__ import annotations

import argparse

from mlm.config import add_dataclass_arguments, apply_overrides
from mlm.errors import ArgumentParser, UserError, command


def train_parser() -> argparse.ArgumentParser:
    """The parser of train_mlm.py: --recipe plus one flag per recipe setting."""
    parser = ArgumentParser(
        prog="train_mlm.py",
        description="Pretrain a masked-language model from a data recipe: ingest the corpus, "
                    "train a tokenizer, pack blocks, pretrain with dynamic masking, save the model.",
    )
    parser.add_argument("--recipe", default=None,
                        help="YAML data recipe (default: data_recipes/demo.yaml)")
    add_dataclass_arguments(parser)
    return parser


@command
def train_main(argv: list[str] | None = None) -> int:
    """Run pretraining from the command line."""
    parser = train_parser()
    args = vars(parser.parse_args(argv))
    from mlm.recipe import DEFAULT_RECIPE, load_recipe

    recipe = load_recipe(args.pop("recipe") or DEFAULT_RECIPE)
    apply_overrides(recipe, args)
    from mlm.pretrain import pretrain

    out = pretrain(recipe)
    if recipe.hub.push_to_hub:
        _push(out, recipe.hub)
    return 0


def _push(folder, hub) -> None:
    from mlm.hub import push_to_hub

    if not hub.hub_model_id:
        raise UserError("--push_to_hub needs --hub_model_id")
    url = push_to_hub(folder, hub.hub_model_id, private=hub.hub_private_repo, revision=hub.hub_revision)
    print(f"pushed to {url}")


def finetune_main(argv: list[str] | None = None) -> int:
    """Run fine-tuning from the command line (see mlm.finetune.cli)."""
    from mlm.finetune.cli import main

    return main(argv)


if __name__ == "__main__":  # `python -m mlm.cli ...` is `python -m mlm ...`
    import sys

    from mlm.__main__ import main

    sys.exit(main())
