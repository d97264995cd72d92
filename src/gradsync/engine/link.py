"""A simulated network link, off by default, for measuring what a slower network would do.

    GRADSYNC_SIMULATED_LINK=10gbit,25us     (also: 100gbit,5us; 1gbit,100us; 800mbit,1ms)

On one machine the "network" is shared memory, as fast as the cores that move it. With a
simulated link, every allreduce message also takes the time the ring model gives it on that
link, spent waiting (asleep, the cores free): a ring allreduce of S bytes over W ranks takes
``2 (W - 1) / W * S / bandwidth + 2 (W - 1) * latency``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import time

VARIABLE = "GRADSYNC_SIMULATED_LINK"
_RATES = {"gbit": 1e9 / 8, "mbit": 1e6 / 8, "gb": 1e9, "mb": 1e6}
_TIMES = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_SETTING = re.compile(
    r"^\s*(?P<rate>[0-9.]+)\s*(?P<rate_unit>gbit|mbit|gb|mb)\s*,"
    r"\s*(?P<latency>[0-9.]+)\s*(?P<latency_unit>s|ms|us)\s*$",
    re.IGNORECASE,
)


@dataclasses.dataclass(frozen=True)
class Link:
    """A link of ``bandwidth`` bytes per second and ``latency`` seconds per ring step."""

    bandwidth: float
    latency: float

    def ring_allreduce_seconds(self, nbytes: float, workers: int) -> float:
        """The time a ring allreduce of ``nbytes`` over ``workers`` ranks takes on this link."""
        if workers < 2:
            return 0.0
        steps = 2 * (workers - 1)
        return steps / workers * nbytes / self.bandwidth + steps * self.latency


def parse_link(text: str) -> Link:
    """``"10gbit,25us"`` as a ``Link``; anything else is refused with an example."""
    match = _SETTING.match(text)
    if match is None:
        raise ValueError(
            f"{VARIABLE}={text!r} is not a link: write bandwidth,latency, e.g. 10gbit,25us "
            "(bandwidth in gbit, mbit, gb or mb per second; latency in s, ms or us)."
        )
    bandwidth = float(match["rate"]) * _RATES[match["rate_unit"].lower()]
    latency = float(match["latency"]) * _TIMES[match["latency_unit"].lower()]
    if bandwidth <= 0:
        raise ValueError(f"{VARIABLE}={text!r}: the bandwidth must be > 0.")
    return Link(bandwidth, latency)


@functools.cache
def simulated_link() -> Link | None:
    """The link ``GRADSYNC_SIMULATED_LINK`` describes, or None (the default: no delay)."""
    text = os.environ.get(VARIABLE, "").strip()
    return parse_link(text) if text else None


#: How much longer than asked the earlier waits slept (a virtual machine's sleep can overshoot
#: by a quarter of a millisecond); taken off the next waits, so that a run of messages takes
#: the link's time in total.
_overslept = 0.0


def wait_as_on_link(nbytes: int, workers: int) -> None:
    """Sleeps for the time an allreduce of ``nbytes`` takes on the simulated link, if any."""
    global _overslept
    link = simulated_link()
    if link is None:
        return
    asked = link.ring_allreduce_seconds(nbytes, workers) - _overslept
    if asked <= 0:
        _overslept = -asked
        return
    began = time.perf_counter()
    time.sleep(asked)
    _overslept = max(0.0, time.perf_counter() - began - asked)
