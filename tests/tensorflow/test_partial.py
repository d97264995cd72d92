"""Local variables and partial models (Horovod's PartialDistributedGradientTape,
PartialDistributedOptimizer, register_local_var) and process sets in the training API."""

from pathlib import Path

import numpy as np

from support import run_ranks

WORKER = Path(__file__).parent / "workers" / "partial_worker.py"


def test_local_variables_stay_local_and_process_sets_reduce_among_members(tmp_path):
    ranks = 3
    reports = run_ranks(WORKER, ranks, tmp_path)
    for r, result in enumerate(reports):
        for mode in ["eager", "function"]:
            own = [[np.asarray(g) for g in rep[f"tape_{mode}_own"]] for rep in reports]
            synced = [np.asarray(g) for g in result[f"tape_{mode}_synced"]]
            # Dense(2) kernel and bias: averaged over ranks; Dense(1), local: this rank's
            # own gradient divided by the number of ranks (Horovod's scale_local_gradients).
            for index in (0, 1):
                np.testing.assert_allclose(
                    synced[index], np.mean([o[index] for o in own], axis=0), rtol=1e-5
                )
            for index in (2, 3):
                np.testing.assert_allclose(synced[index], own[r][index] / ranks, rtol=1e-5)
        assert result["split"] == [2, 2]
        # Two aggregated calls of SGD(1.0): the shared variable moves by the ranks' average
        # of the summed gradients, the local one by its own sum divided by the ranks.
        mean_factor = np.mean([q + 1.0 for q in range(ranks)])
        np.testing.assert_allclose(
            result["optimizer_shared"], [1.0 - 2 * mean_factor, 1.0 - 4 * mean_factor]
        )
        np.testing.assert_allclose(result["optimizer_local"], [5.0 - 2 * 3.0 * (r + 1) / ranks])
        assert result["broadcast_local"] == [float(r)]
        if r in (0, 2):
            assert result["process_set_weight"] == [-(0.0 + 2.0) / 2]
        else:
            assert "process_set_weight" not in result
