"""``SyncSettings``: how gradients are synchronized, validated once and shared by every entry
point (the optimizers, the gradient tape and the aggregation helpers)."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from gradsync import engine
from gradsync.engine import ProcessSet, ReduceOp, global_process_set
from gradsync.tensorflow.ops import Compression, Compressor
from gradsync.tensorflow.ops.compression import check_compression, compression_name

CountSteps = Literal["calls", "updates"]


def check_backward_passes_per_step(value: object) -> int:
    """Returns ``value`` if it is an integer >= 1, else raises ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"backward_passes_per_step must be an integer >= 1, got {value!r}. "
            "It is the number of backward passes aggregated locally per communication."
        )
    return value


@dataclasses.dataclass(frozen=True)
class SyncSettings:
    """How gradients are aggregated and reduced across ranks.

    - ``backward_passes_per_step`` (N): gradients of N calls are summed locally and
      communicated once; ``average_aggregated_gradients`` divides that sum by N.
    - ``item_weighted``: each micro-step brings the gradient of its *summed* loss and its item
      count (samples, tokens, unmasked positions, or the sum of sample weights); the update is
      the sum of gradients over the window and the ranks divided by the sum of counts: the
      gradient of the mean loss over every item, however unequal the micro-batches.
    - ``count_steps``: whether step counters count every call ("calls", as Horovod) or
      applied updates only ("updates").
    - ``op``, ``compression``, ``gradient_predivide_factor``, ``process_set``: how the
      reduction runs; ``sparse_as_dense`` densifies ``tf.IndexedSlices`` first.
    - ``scale_local_gradients``: local variables' gradients (never reduced) are divided by
      the number of ranks, as Horovod does.
    - ``raise_on_non_finite``: a reduced gradient with an inf or NaN raises, naming its
      variable, instead of being applied.
    - ``bucket_bytes``: gradients reduced every call (N = 1) travel in buckets of about this
      many bytes (25 MiB is DDP's choice), the last layers' first, each issued as soon as its
      gradients exist, so that in a graph their communication can overlap the rest of the
      backward pass. None (the default): one fused allreduce, which measured no slower on
      the machines gradsync is tested on (BENCHMARKS.md, item 9). Aggregation windows always
      travel in one fused allreduce.
    - ``num_groups`` and ``groups`` are Horovod's fusion grouping; gradsync fuses all
      gradients into one communication, so they are validated and otherwise ignored.
    """

    backward_passes_per_step: int = 1
    average_aggregated_gradients: bool = False
    count_steps: CountSteps = "calls"
    item_weighted: bool = False
    op: ReduceOp = ReduceOp.AVERAGE
    compression: Compressor = Compression.none
    sparse_as_dense: bool = False
    gradient_predivide_factor: float = 1.0
    process_set: ProcessSet = global_process_set
    scale_local_gradients: bool = True
    raise_on_non_finite: bool = False
    bucket_bytes: int | None = None
    num_groups: int = 0
    groups: Any = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        check_backward_passes_per_step(self.backward_passes_per_step)
        if self.count_steps not in ("calls", "updates"):
            raise ValueError(f'count_steps must be "calls" or "updates", got {self.count_steps!r}.')
        engine.check_reduce_op(self.op, (ReduceOp.AVERAGE, ReduceOp.SUM, ReduceOp.ADASUM))
        check_compression(self.compression)
        if self.gradient_predivide_factor != 1.0 and self.op is not ReduceOp.AVERAGE:
            raise ValueError("gradient_predivide_factor is only supported with op=Average.")
        if self.gradient_predivide_factor <= 0:
            raise ValueError(
                f"gradient_predivide_factor must be > 0, got {self.gradient_predivide_factor}."
            )
        if not isinstance(self.item_weighted, bool):
            raise ValueError(f"item_weighted must be True or False, got {self.item_weighted!r}.")
        if self.item_weighted and self.op is not ReduceOp.AVERAGE:
            raise ValueError(
                f"item_weighted=True averages over the items of every rank; it needs "
                f"op=Average, got op={self.op.name}."
            )
        if not isinstance(self.process_set, ProcessSet):
            raise ValueError(f"process_set must be a ProcessSet, got {self.process_set!r}.")
        if self.bucket_bytes is not None and (
            isinstance(self.bucket_bytes, bool)
            or not isinstance(self.bucket_bytes, int)
            or self.bucket_bytes < 1
        ):
            raise ValueError(
                f"bucket_bytes must be an integer >= 1 or None, got {self.bucket_bytes!r}."
            )
        if isinstance(self.num_groups, bool) or not isinstance(self.num_groups, int):
            raise ValueError(f"num_groups must be an integer >= 0, got {self.num_groups!r}.")
        if self.num_groups < 0:
            raise ValueError(f"num_groups must be an integer >= 0, got {self.num_groups!r}.")
        if self.groups is not None and not isinstance(self.groups, (int, list)):
            raise ValueError(
                f"groups must be an integer or a list of lists of variables, got {self.groups!r}."
            )

    @classmethod
    def from_arguments(cls, arguments: dict[str, Any]) -> SyncSettings:
        """Settings from a constructor's arguments (its ``locals()``): the ones that are
        fields here, so every Horovod-style signature builds them the same way."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in arguments.items() if k in names})

    @property
    def aggregates(self) -> bool:
        """Whether gradients are accumulated in windows (N > 1, or weighted by items); with
        N = 1 and no item weights every call is reduced as it comes, with no state."""
        return self.backward_passes_per_step > 1 or self.item_weighted

    def to_config(self) -> dict[str, Any]:
        """The settings as JSON-serializable values (a Keras file keeps them)."""
        process_set = self.process_set
        return {
            "backward_passes_per_step": self.backward_passes_per_step,
            "average_aggregated_gradients": self.average_aggregated_gradients,
            "count_steps": self.count_steps,
            "item_weighted": self.item_weighted,
            "op": self.op.value,
            "compression": compression_name(self.compression),
            "sparse_as_dense": self.sparse_as_dense,
            "gradient_predivide_factor": self.gradient_predivide_factor,
            "process_set": None if process_set is global_process_set else process_set.ranks,
            "scale_local_gradients": self.scale_local_gradients,
            "raise_on_non_finite": self.raise_on_non_finite,
            "bucket_bytes": self.bucket_bytes,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], **overrides: Any) -> SyncSettings:
        """Settings from ``to_config``'s values, where ``overrides`` replace some of them."""
        values = dict(config)
        values.pop("name", None)  # written by earlier versions next to the settings
        values["op"] = ReduceOp(values["op"])
        if values["compression"] is None and "compression" not in overrides:
            raise ValueError(
                "the optimizer was saved with a custom Compressor, which a file cannot hold: "
                "pass compression=... to load_model."
            )
        values["compression"] = getattr(Compression, values["compression"] or "none")
        ranks = values.pop("process_set", None)
        if ranks is not None and "process_set" not in overrides:
            values["process_set"] = _registered_set(ranks)
        values.update(overrides)
        return cls(**values)


def _registered_set(ranks: list[int]) -> ProcessSet:
    for process_set in engine.registered_process_sets():
        if process_set.ranks == sorted(ranks):
            return process_set
    raise ValueError(
        f"the optimizer was saved to reduce over the process set with ranks {ranks}, which is "
        "not registered now: register it first, or pass process_set=... to load_model."
    )
