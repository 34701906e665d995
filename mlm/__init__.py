"""mlm: masked-language-model pretraining and small-data fine-tuning for in-house text."""
import os

# Idle OpenMP threads sleep rather than spin, so that two runs on one machine each keep about
# their share of the cores (see mlm.cpus). Read once, when torch loads its OpenMP runtime: it
# takes effect when mlm is imported before torch, as the command-line entry points do.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
