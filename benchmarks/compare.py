"""Before and after: the allreduce item (``allreduce.py``) on this tree and on an earlier
revision, launched alternately in one invocation, so that both meet the same machine load.

    python benchmarks/compare.py --base REV [--sizes 1 16] [--rounds 3] [--repeats 5]

The earlier revision's ``src`` is checked out in a temporary git worktree; the worker script is
this tree's, so both measure the same cases. Each figure is the median, over the rounds, of a
path's median ratio to mpi4py's raw ``Allreduce`` of the same bytes timed in the same repeats
(``ratio_to_raw``): load that slows both alike cancels out. The median milliseconds are
printed too: on a virtual machine whose raw reduce itself changes speed from launch to launch
(for instance with how busy its other threads keep the cores), they are the fairer comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")
PATHS = ["engine", "eager", "tf_function", "v1_graph", "tf_function_no_communication"]


def run_allreduce(src: Path, sizes: list[int], repeats: int, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(HERE)])}
    command = [
        MPIEXEC,
        "-n",
        "2",
        sys.executable,
        str(HERE / "allreduce.py"),
        "--out",
        str(out),
        "--repeats",
        str(repeats),
        "--sizes",
        *map(str, sizes),
    ]
    subprocess.run(command, check=True, env=env, capture_output=True, timeout=1800)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the earlier revision (e.g. HEAD~3)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    ratios: dict[str, dict[int, dict[str, list[float]]]] = {"base": {}, "this": {}}
    # (size, path, part) -> label -> the part's median milliseconds in each round
    parts: dict[tuple[int, str, str], dict[str, list[float]]] = {}
    seconds: dict[str, dict[int, dict[str, list[float]]]] = {"base": {}, "this": {}}
    with tempfile.TemporaryDirectory() as scratch:
        worktree = Path(scratch) / "base"
        subprocess.run(
            [
                "git",
                "-C",
                str(ROOT),
                "worktree",
                "add",
                "--detach",
                "--quiet",
                str(worktree),
                args.base,
            ],
            check=True,
        )
        try:
            for round_number in range(args.rounds):
                for label, src in [("base", worktree / "src"), ("this", ROOT / "src")]:
                    out = Path(scratch) / f"{label}{round_number}.json"
                    result = run_allreduce(src, args.sizes, args.repeats, out)
                    for size, measured in zip(args.sizes, result["sizes"], strict=True):
                        for path, found in measured.get("fixed_cost_ms", {}).items():
                            for part, summary in found.items():
                                by_label = parts.setdefault((size, path, part), {})
                                by_label.setdefault(label, []).append(summary["median"])
                        for path in ["raw_mpi4py", *PATHS]:
                            took = measured["seconds"][path]["median"]
                            seconds[label].setdefault(size, {}).setdefault(path, []).append(took)
                            if path in PATHS:
                                ratio = measured["ratio_to_raw"][path]["median"]
                                ratios[label].setdefault(size, {}).setdefault(path, []).append(
                                    ratio
                                )
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=True
            )
    print(
        f"median ratio to raw mpi4py over {args.rounds} alternating rounds "
        f"(base = {args.base}, this = the working tree)"
    )
    print(
        f"{'MB':>4} {'path':<30} {'base':>8} {'this':>8} {'this/base':>10}"
        f" {'base ms':>9} {'this ms':>9}"
    )
    for size in args.sizes:
        for path in ["raw_mpi4py", *PATHS]:
            base_ms = statistics.median(seconds["base"][size][path]) * 1e3
            this_ms = statistics.median(seconds["this"][size][path]) * 1e3
            if path in PATHS:
                base = statistics.median(ratios["base"][size][path])
                this = statistics.median(ratios["this"][size][path])
                ratio_columns = f"{base:8.2f} {this:8.2f} {this / base:10.2f}"
            else:
                ratio_columns = f"{'':8} {'':8} {'':10}"
            print(f"{size:>4} {path:<30} {ratio_columns} {base_ms:9.3f} {this_ms:9.3f}")
    if parts:
        print("\nparts of the fixed cost, ms (median over the rounds; see allreduce.fixed_cost)")
        print(f"{'MB':>4} {'path':<12} {'part':<20} {'base ms':>9} {'this ms':>9}")
        for (size, path, part), by_label in parts.items():
            base_ms, this_ms = (statistics.median(by_label[label]) for label in ("base", "this"))
            print(f"{size:>4} {path:<12} {part:<20} {base_ms:9.3f} {this_ms:9.3f}")


if __name__ == "__main__":
    main()
