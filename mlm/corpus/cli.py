"""`mlm-corpus RECIPE --output DIR`: run the corpus stage alone and print its stats.

A user mistake prints one line on stderr and exits with code 2.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mlm.config import (
    CleanConfig,
    DedupConfig,
    PrivacyConfig,
    SplitConfig,
    add_dataclass_arguments,
    apply_overrides,
    check_ranges,
)
from mlm.errors import ArgumentParser, UserError, command, create_folder


@dataclass
class CorpusSections:
    """The recipe sections that shape the corpus (their fields become flags)."""

    clean: CleanConfig = field(default_factory=CleanConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="mlm-corpus",
        description="Build the corpus of a data recipe: read its sources, clean, scrub PII, "
                    "remove exact and near duplicates, split into train/validation, and write a "
                    "datasets folder plus stats.json. Re-running an unchanged recipe does no work.",
    )
    p.add_argument("recipe", help="YAML data recipe (see data_recipes/README.md)")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="folder to write the corpus to (load it with datasets.load_from_disk)")
    p.add_argument("--quiet", action="store_true", help="do not print the stats table")
    add_dataclass_arguments(p, CorpusSections)
    return p


@command
def main(argv: list[str] | None = None) -> int:
    """Build a corpus from the command line; 0 on success, 2 on a user mistake."""
    args = vars(parser().parse_args(argv))
    recipe_path, output, quiet = args.pop("recipe"), args.pop("output"), args.pop("quiet")
    from mlm.corpus.build import format_stats, write_corpus
    from mlm.recipe import check_output_outside_sources, load_recipe

    recipe = load_recipe(recipe_path)
    apply_overrides(recipe, args)
    check_ranges(recipe)
    check_output_outside_sources(recipe, output, "--output")
    if Path(output).exists() and not Path(output).is_dir():
        raise UserError(f"--output {output} is a file; give a folder")
    create_folder(Path(output).parent, "--output's parent")
    _, stats, built = write_corpus(recipe, output)
    if not quiet:
        print(format_stats(stats))
    docs = stats["documents"]
    state = "written to" if built else "up to date in"
    print(f"corpus {state} {output} (train {docs['train']:,}, validation {docs['validation']:,} "
          "documents)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
