"""`python -m mlm COMMAND [flags]`: the installed console commands under one name, for
environments where their scripts are not on PATH (mlm-train, mlm-finetune, mlm-corpus,
mlm-tokenizer-audit, mlm-push)."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("mlm.cli", "train_main", "pretrain from a data recipe (train_mlm.py, mlm-train)"),
    "finetune": ("mlm.cli", "finetune_main", "fine-tune and evaluate (finetune.py, mlm-finetune)"),
    "corpus": ("mlm.corpus.cli", "main", "build and inspect a corpus only (mlm-corpus)"),
    "tokenizer-audit": ("mlm.tokenizer_audit", "main", "compare tokenizers on a corpus"),
    "push": ("mlm.hub", "main", "push a saved model folder to a hub (mlm-push)"),
}


def usage() -> str:
    lines = ["usage: python -m mlm COMMAND [flags]   (COMMAND --help for its flags)", "",
             "commands:"]
    lines += [f"  {name:<16} {what}" for name, (_, _, what) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}: allowed {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    module, name, _ = COMMANDS[argv[0]]
    return getattr(importlib.import_module(module), name)(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
