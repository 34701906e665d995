#!/usr/bin/env python
"""Pretrain a masked-language model from a data recipe (see `python train_mlm.py --help`)."""
from mlm.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main())
