"""Runs the benchmark suite, prints its tables, writes JSON and regenerates BENCHMARKS.md.

    python benchmarks/run.py            # everything (about 15 minutes on 2 cores)
    python benchmarks/run.py --quick    # fewer sizes, models and repeats (under 5 minutes)
    python benchmarks/run.py --horovod  # gradsync against Horovod (needs Horovod installed)
    python benchmarks/run.py --only allreduce accumulate

Each item runs in fresh processes (2 ranks, or 2 MultiWorkerMirroredStrategy workers on
127.0.0.1, or 1 process) and measures its reference in the same processes, taking turns with
the measured cases. Results go to benchmarks/results/<item>.json; logs to build/bench-logs/.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import report

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
LOGS = ROOT / "build" / "bench-logs"
BIN = Path(sys.executable).parent
PYTHON = str(BIN / "python")

PLANS = {
    "quick": {
        "allreduce": {"sizes": [1, 16, 64], "repeats": 5},
        "accumulate": {"sizes": [64], "repeats": 5},
        "training": {"models": ["10M"], "ns": [1, 2, 4, 8], "repeats": 5, "micro_steps": 8},
        "mwms": {"models": ["10M"], "ns": [1, 4], "repeats": 3, "micro_steps": 8},
        "memory": {"models": ["10M"], "configs": ["plain", "1", "4"]},
        "horovod": {"models": ["10M"], "ns": [1, 4, 8], "repeats": 5, "micro_steps": 8},
        "soak": {"micro_steps": 2000},
        "elastic": {"models": ["10M"], "repeats": 5},
        "overlap": {"links": ["10gbit,25us"], "repeats": 3},
        "models": {"models": ["mobilenet_v2"], "launches": 1, "repeats": 3},
    },
    "full": {
        "allreduce": {"sizes": [1, 4, 16, 64], "repeats": 9},
        "accumulate": {"sizes": [16, 64], "repeats": 9},
        "training": {
            "models": ["1M", "10M", "50M"],
            "ns": [1, 2, 4, 8],
            "repeats": 7,
            "micro_steps": 16,
        },
        "mwms": {"models": ["1M", "10M"], "ns": [1, 2, 4, 8], "repeats": 5, "micro_steps": 8},
        "memory": {"models": ["10M", "50M"], "configs": ["plain", "1", "4"]},
        "horovod": {"models": ["1M", "10M"], "ns": [1, 2, 4, 8], "repeats": 7, "micro_steps": 16},
        "soak": {"micro_steps": 10000},
        "elastic": {"models": ["1M", "10M"], "repeats": 9},
        "overlap": {"links": ["10gbit,25us", "100gbit,5us"], "repeats": 5},
        "models": {"models": ["mobilenet_v2", "resnet50"], "launches": 2, "repeats": 3},
    },
}
ITEMS = ["allreduce", "accumulate", "training", "mwms", "memory", "soak", "elastic", "overlap"]
SOAK_WORKER = ROOT / "tests" / "tensorflow" / "workers" / "soak_worker.py"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(name: str, commands: list[tuple[list[str], dict]], timeout: float) -> str | None:
    """Runs the commands side by side; returns None, or why they failed."""
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / f"{name}.log"
    started = time.monotonic()
    with open(log_path, "w") as log:
        processes = [
            subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=HERE
            )
            for command, env in commands
        ]
        try:
            codes = [
                p.wait(timeout=max(1.0, timeout - (time.monotonic() - started))) for p in processes
            ]
        except subprocess.TimeoutExpired:
            for process in processes:
                process.kill()
            return f"timed out after {timeout:.0f} s (log: {log_path})"
    if any(codes):
        tail = log_path.read_text(errors="replace").strip().splitlines()[-8:]
        return f"exit codes {codes} (log: {log_path}):\n  " + "\n  ".join(tail)
    return None


def mpi(script: str, args: list[str], launcher: str = "mpiexec") -> list[tuple[list, dict]]:
    if launcher == "horovodrun":
        prefix = [str(BIN / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo"]
    else:
        prefix = [str(BIN / "mpiexec"), "-n", "2"]
    return [([*prefix, PYTHON, script, *args], {})]


def tf_config_workers(script: str, args: list[str]) -> list[tuple[list, dict]]:
    workers = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    return [
        (
            [PYTHON, script, *args],
            {
                "TF_CONFIG": json.dumps(
                    {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
                )
            },
        )
        for i in range(2)
    ]


def run_one(name: str, commands, out: Path, timeout: float) -> dict:
    print(f"  {name} ...", end="", flush=True)
    started = time.monotonic()
    out.unlink(missing_ok=True)
    error = launch(name, commands, timeout)
    seconds = time.monotonic() - started
    print(f" {seconds:.0f} s" + (f"  FAILED: {error}" if error else ""), flush=True)
    if error or not out.exists():
        return {"error": error or "no result written", "wall_seconds": seconds}
    result = json.loads(out.read_text())
    result["wall_seconds"] = seconds
    return result


def run_soak(plan: dict, timeout: float) -> list[dict]:
    """The test suite's soak worker (a 1.1M-parameter model, N=4), for many more micro-steps."""
    out = LOGS / "soak"
    steps = plan["micro_steps"]
    command = [str(BIN / "mpiexec"), "-n", "2", PYTHON, str(SOAK_WORKER), str(out), str(steps)]
    print("  soak ...", end="", flush=True)
    started = time.monotonic()
    error = launch("soak", [(command, {"PYTHONPATH": str(ROOT / "tests")})], timeout)
    seconds = time.monotonic() - started
    print(f" {seconds:.0f} s" + (f"  FAILED: {error}" if error else ""), flush=True)
    if error:
        return [{"error": error, "wall_seconds": seconds}]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return [{"micro_steps": steps, "ranks": ranks, "wall_seconds": seconds}]


def run_models(plan: dict, timeout: float) -> list[dict]:
    """Real models, gradsync and Horovod in alternating launches (Horovod's environment)."""
    results = []
    out = LOGS / "models.json"
    for model in plan["models"]:
        for mode in ("tape", "fit", "graph"):
            for passes in (1, 4):
                for launch in range(plan["launches"]):
                    for framework in ("gradsync", "horovod"):
                        if framework == "horovod" and mode == "tape" and passes > 1:
                            continue  # Horovod 0.28.1's tape has no backward_passes_per_step
                        args = [
                            "--framework", framework, "--model", model, "--mode", mode,
                            "--passes", str(passes), "--repeats", str(plan["repeats"]),
                            "--out", str(out),
                        ]  # fmt: skip
                        launcher = "horovodrun" if framework == "horovod" else "mpiexec"
                        name = f"{framework} {model} {mode} N={passes} #{launch + 1}"
                        results.append(
                            run_one(name, mpi("models.py", args, launcher), out, timeout)
                        )
    return results


def run_item(item: str, plan: dict, timeout: float) -> list[dict]:
    if item == "soak":
        return run_soak(plan, timeout)
    if item == "models":
        return run_models(plan, timeout)
    if item == "overlap":
        results = []
        for setting in plan["links"]:
            out = LOGS / "overlap.json"
            args = ["--repeats", str(plan["repeats"]), "--out", str(out)]
            [(command, _)] = mpi("overlap.py", args)
            commands = [(command, {"GRADSYNC_SIMULATED_LINK": setting})]
            results.append(run_one(f"overlap {setting}", commands, out, timeout))
        return results
    if item == "elastic":
        args = ["--repeats", str(plan["repeats"]), "--out", str(LOGS / "elastic.json")]
        command = [PYTHON, "elastic.py", *args, "--models", *plan["models"]]
        return [run_one("elastic", [(command, {})], LOGS / "elastic.json", timeout)]
    tmp = LOGS / f"{item}.json"
    repeats = ["--repeats", str(plan.get("repeats", 3))]
    if item in ("allreduce", "accumulate"):
        args = [*repeats, "--out", str(tmp), "--sizes", *map(str, plan["sizes"])]
        commands = (
            mpi(f"{item}.py", args)
            if item == "allreduce"
            else [([PYTHON, "accumulate.py", *args], {})]
        )
        return [run_one(item, commands, tmp, timeout)]
    results = []
    for model in plan["models"]:
        common = ["--out", str(tmp), "--model", model]
        if item == "memory":
            for config in plan["configs"]:
                args = [*common, "--memory", config]
                results.append(
                    run_one(f"memory-{model}-{config}", mpi("training.py", args), tmp, timeout)
                )
            continue
        args = [
            *common,
            *repeats,
            "--ns",
            *map(str, plan["ns"]),
            "--micro-steps",
            str(plan["micro_steps"]),
        ]
        if item == "training":
            results.append(run_one(f"training-{model}", mpi("training.py", args), tmp, timeout))
        elif item == "mwms":
            results.append(
                run_one(f"mwms-{model}", tf_config_workers("mwms.py", args), tmp, timeout)
            )
        elif item == "horovod":
            graph = [*args, "--mode", "graph"]
            results.append(
                run_one(f"graph-gradsync-{model}", mpi("training.py", graph), tmp, timeout)
            )
            hvd = [*graph, "--framework", "horovod"]
            results.append(
                run_one(
                    f"graph-horovod-{model}", mpi("training.py", hvd, "horovodrun"), tmp, timeout
                )
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the under-5-minute subset")
    parser.add_argument(
        "--horovod", action="store_true", help="only gradsync vs Horovod (in its environment)"
    )
    parser.add_argument("--only", nargs="+", choices=[*ITEMS, "horovod", "models"])
    parser.add_argument("--timeout", type=float, default=900, help="seconds per launch")
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    items = args.only or (["horovod", "models"] if args.horovod else ITEMS)
    RESULTS.mkdir(exist_ok=True)
    started = time.monotonic()
    print(f"gradsync benchmarks ({mode} mode, {os.cpu_count()} cores): {', '.join(items)}")
    for item in items:
        results = run_item(item, PLANS[mode][item], args.timeout)
        record = {"mode": mode, "date": time.strftime("%Y-%m-%d %H:%M"), "results": results}
        (RESULTS / f"{item}.json").write_text(json.dumps(record, indent=1))
    total = time.monotonic() - started
    print(f"finished in {total:.0f} s\n")
    everything = report.load(RESULTS)
    print(report.text(everything))
    report.write_markdown(everything, ROOT / "BENCHMARKS.md", HERE / "plots")
    print(f"wrote {RESULTS}/*.json, BENCHMARKS.md and {HERE / 'plots'}/*.png")


if __name__ == "__main__":
    main()
