"""Fine-tuning stage: classification and NER on small labeled sets, with an honest multi-seed,
multi-size protocol against a random-init twin and a TF-IDF + logistic-regression baseline.

    from mlm.finetune import finetune      # finetune(FinetuneConfig) -> results dict
"""
from mlm.finetune.config import DataConfig, FinetuneConfig, ProtocolConfig, RunConfig, TaskConfig, TrainConfig


def finetune(config: FinetuneConfig) -> dict:
    """Run every task of `config` for every model, train size and seed (see mlm.finetune.protocol).

    Imported lazily so that `finetune.py --help` and input errors answer without loading torch."""
    from mlm.finetune.protocol import finetune as run

    return run(config)


__all__ = ["DataConfig", "FinetuneConfig", "ProtocolConfig", "RunConfig", "TaskConfig", "TrainConfig", "finetune"]
