"""The blocks benchmark-sweep hands a model it launches as its own run-benchmark run."""

from __future__ import annotations

import inspect


def test_every_block_of_the_sweep_goes_on_to_run_benchmark() -> None:
    from flows.benchmark_sweep import benchmark_sweep, child_blocks
    from flows.run_benchmark import run_benchmark

    blocks = child_blocks("team-shared", "fast-cache", "clearml-prod")
    assert blocks == {
        "shared_block": "team-shared",
        "cache_block": "fast-cache",
        "clearml_block": "clearml-prod",
    }
    sweep_blocks = {
        p for p in inspect.signature(benchmark_sweep.fn).parameters if p.endswith("_block")
    }
    assert set(blocks) == sweep_blocks  # none of the sweep's blocks is dropped
    # run_deployment's parameters must all be run-benchmark parameters, or the child run fails
    assert set(blocks) <= set(inspect.signature(run_benchmark.fn).parameters)
