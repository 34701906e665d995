"""mlm: masked-language-model pretraining and small-data fine-tuning for in-house text."""
import os

# Idle OpenMP threads spin briefly (10,000 iterations, a few microseconds: enough between the
# parallel regions of one step) and then sleep, so that two runs on one machine each keep close
# to their share of the cores instead of spinning on the other's (bench/bench_shared.py; see
# mlm.cpus). Read once, when torch loads its OpenMP runtime: it takes effect when mlm is imported
# before torch, as the command-line entry points do. OMP_WAIT_POLICY, if set, takes precedence.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")
