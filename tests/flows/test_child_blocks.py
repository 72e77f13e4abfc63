"""What benchmark-sweep hands a model it launches as its own run-benchmark run: its blocks, and
which run-benchmark deployment."""

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


def test_a_pod_model_runs_as_the_run_benchmark_named_like_the_sweeps_deployment() -> None:
    from flows.tasks import child_deployment
    from mlstage.specs import ModelSpec

    pod = ModelSpec(name="m", dataset="d", entrypoint="x:y", launch="deployment")
    assert child_deployment(pod, "k8s") == "k8s"  # benchmark-sweep/k8s -> run-benchmark/k8s
    assert child_deployment(pod, None) == "default"  # the sweep was not a deployment run
    chosen = pod.model_copy(update={"deployment": "gpu"})
    assert child_deployment(chosen, "k8s") == "gpu"  # the model's own choice wins


def test_every_flow_that_moves_data_takes_the_shared_tier_and_cache_blocks() -> None:
    from flows.benchmark_sweep import benchmark_sweep
    from flows.preprocess_dataset import preprocess_dataset
    from flows.run_benchmark import run_benchmark
    from flows.stage_datasets import stage_datasets

    for f in (preprocess_dataset, stage_datasets, run_benchmark, benchmark_sweep):
        assert {"shared_block", "cache_block"} <= set(inspect.signature(f.fn).parameters), f.name
