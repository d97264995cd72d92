"""A shorter soak than the benchmark suite's: memory stays flat and nothing retraces."""

from pathlib import Path

from support import run_ranks

WORKER = Path(__file__).parent / "workers" / "soak_worker.py"
MICRO_STEPS = 1000


def test_memory_flat_and_no_retracing_over_many_micro_steps(tmp_path):
    for report in run_ranks(WORKER, 2, tmp_path, str(MICRO_STEPS)):
        assert report["iterations"] == MICRO_STEPS
        # Traced on the first call (twice, as TensorFlow does when it creates variables), never
        # again after.
        assert report["traces"] == report["traces_after_warm_up"] <= 2
        growth = report["at_end"] / report["after_warm_up"] - 1
        assert growth <= 0.05, f"resident memory grew {growth:.1%} after warm-up"
