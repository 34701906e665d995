"""`make gpu-check` exercised where CI runs: the same script on the CPU with tiny models."""
import subprocess
import sys

from tests.conftest import REPO


def test_gpu_check_script_runs_end_to_end_in_smoke_mode():
    res = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--smoke",
                          "--steps", "30"], capture_output=True, text=True, timeout=280, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    for family, seq in (("bert", 128), ("modernbert", 128), ("bert", 512), ("modernbert", 512)):
        # the attention `auto` chose, read back from the run: eager on CPU up to 128 tokens
        attention = "eager" if seq == 128 else "sdpa"
        assert f"| {family}-tiny | {seq} | 8 | {attention} |" in out
    assert "fine-tuning on cpu" in out  # the device the run was placed on, read back from results
    rates = [float(line.split("|")[6].replace(",", "")) for line in out.splitlines()
             if line.startswith("| bert") or line.startswith("| modernbert")]
    assert len(rates) == 4 and min(rates) > 100  # tokens/s read from the runs' own logs
