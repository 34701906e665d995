#!/usr/bin/env python
"""Fine-tune and compare encoders on labeled data (see `python finetune.py --help`)."""
from mlm.cli import finetune_main

if __name__ == "__main__":
    raise SystemExit(finetune_main())
