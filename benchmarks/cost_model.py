"""The cost model of BENCHMARKS.md: ring allreduce time and the efficiency it leaves.

A ring allreduce of S bytes over W workers sends and receives 2(W-1)/W x S bytes per worker
in 2(W-1) steps, so it takes T = 2(W-1)/W x S / B + 2(W-1) x latency on links of B bytes/s.
With N micro-steps of compute time t per synchronization, the fraction of the ideal
(communication-free) throughput is N t / (N t + T): aggregation divides the communication
per sample by N. Computation and communication are assumed not to overlap, as in gradsync.
"""

from __future__ import annotations

from gradsync.engine.link import Link

LINKS = {"10 Gbit/s": (10e9 / 8, 25e-6), "100 Gbit/s": (100e9 / 8, 5e-6)}  # bytes/s, latency
WORKERS = (8, 64, 512)


def ring_seconds(nbytes: float, workers: int, bandwidth: float, latency: float) -> float:
    return Link(bandwidth, latency).ring_allreduce_seconds(nbytes, workers)


def efficiency(step_seconds: float, n: int, allreduce_seconds: float) -> float:
    compute = n * step_seconds
    return compute / (compute + allreduce_seconds)


def predictions(parameters: int, step_seconds: float, ns: list[int]) -> list[dict]:
    """One row per link and worker count: predicted fraction of the ideal for each N."""
    nbytes = 4 * parameters
    rows = []
    for link, (bandwidth, latency) in LINKS.items():
        for workers in WORKERS:
            seconds = ring_seconds(nbytes, workers, bandwidth, latency)
            rows.append(
                {
                    "link": link,
                    "workers": workers,
                    "allreduce_seconds": seconds,
                    "efficiency": {n: efficiency(step_seconds, n, seconds) for n in ns},
                }
            )
    return rows
