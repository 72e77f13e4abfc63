"""Regression tests for the security review: links published, shard patterns escaping, secrets
written out, masked re-runs, runs left 'running', a dying notify checker, cache races."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sqlite3
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mlstage import pipeline
from mlstage.errors import ConfigError, UnsafePathError
from mlstage.events import dataset_changed
from mlstage.recipes import ShardParams, load_recipe
from mlstage.redact import scrub_text
from mlstage.restage import StaleRun, masked_reason, restage
from mlstage.runner import check_entrypoint
from mlstage.settings import get_settings
from mlstage.shared import FolderSharedTier, S3SharedTier, check_artifact_id, manifest_of_dir
from mlstage.specs import DatasetSpec, ModelSpec, RecipeSpec, SweepSpec
from mlstage.state.claims import Coordination
from mlstage.state.db import mask_url
from mlstage.watch import WatchEntry, Watcher, WatchList, WatchReport

SECRET = "s3cr3t-Value-42"


@pytest.fixture
def ws(home: Path) -> pipeline.Workspace:
    return pipeline.Workspace.from_settings(get_settings())


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    root = tmp_path / "remote"
    root.mkdir()
    for i in range(3):
        (root / f"s-{i}.json").write_text(json.dumps({"x": i}))
    return root


@pytest.fixture
def recipes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module of user recipes (importable as ``hardening_recipes``); the secret file path."""
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    (tmp_path / "secret_dir").mkdir()
    (tmp_path / "secret_dir" / "inner.txt").write_text(SECRET)
    mod = tmp_path / "mods"
    mod.mkdir()
    (mod / "hardening_recipes.py").write_text(
        textwrap.dedent(
            f"""
            import os
            from pathlib import Path

            def link_file(input_dir, output_dir):
                (Path(output_dir) / "ok.txt").write_text("ok")
                os.symlink({str(secret)!r}, Path(output_dir) / "leak.txt")

            def link_dir(input_dir, output_dir):
                (Path(output_dir) / "ok.txt").write_text("ok")
                os.symlink({str(tmp_path / "secret_dir")!r}, Path(output_dir) / "leakdir")

            def with_token(input_dir, output_dir, hf_token: str = ""):
                (Path(output_dir) / "ok.txt").write_text("ok")
            """
        )
    )
    monkeypatch.syspath_prepend(str(mod))
    sys.modules.pop("hardening_recipes", None)
    return str(secret)


def spec_of(remote: Path, recipe: str, **params: Any) -> DatasetSpec:
    return DatasetSpec(name="toy", uri=str(remote), recipe=RecipeSpec(name=recipe, params=params))


def published_text(root: Path) -> str:
    return "".join(
        p.read_text(errors="replace") for p in root.rglob("*") if p.is_file() and not p.is_symlink()
    )


# 1. publishing never follows links ------------------------------------------------------
@pytest.mark.parametrize("fn", ["link_file", "link_dir"])
def test_a_recipe_that_makes_links_publishes_nothing(
    ws: pipeline.Workspace, remote: Path, recipes: str, fn: str
) -> None:
    resolved = pipeline.resolve(ws, spec_of(remote, f"hardening_recipes:{fn}"))
    with pytest.raises(UnsafePathError, match="leak"):
        pipeline.preprocess(ws, resolved)
    root = Path(ws.shared.uri)
    assert SECRET not in published_text(root)
    assert not list((root / "artifacts").glob("[0-9a-f]*"))


def test_manifest_of_dir_refuses_links(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_text("a")
    os.symlink(tmp_path / "d" / "a", tmp_path / "d" / "b")
    with pytest.raises(UnsafePathError, match="b"):
        manifest_of_dir(tmp_path / "d", source="x")


def test_a_folder_in_the_way_of_a_publish_is_a_clear_error(tmp_path: Path) -> None:
    from mlstage.errors import SharedTierError

    artifact_id = "0" * 32
    in_the_way = tmp_path / "tier" / "artifacts" / artifact_id
    (in_the_way / "data").mkdir(parents=True)  # copied in part by another tool: no manifest
    (in_the_way / "data" / "x").write_text("partial")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("full")
    with pytest.raises(SharedTierError, match="in the way") as info:
        FolderSharedTier(tmp_path / "tier").publish(artifact_id, tmp_path / "out", {})
    assert str(in_the_way) in str(info.value) and "remove that folder" in str(info.value)
    assert sorted(p.name for p in (tmp_path / "tier" / "artifacts").iterdir()) == [artifact_id]


# 2. shard patterns ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "pattern", ["shard.tar", "../escape-{index}.tar", "/tmp/x-{index}.tar", "{index}-{other}.tar"]
)
def test_unsafe_or_colliding_shard_patterns_fail_validation(pattern: str) -> None:
    with pytest.raises(ConfigError, match="pattern"):
        load_recipe(RecipeSpec(name="shard", params={"pattern": pattern}))
    sweep = SweepSpec(
        name="s",
        datasets=[
            DatasetSpec(name="d", uri="/data", recipe=RecipeSpec(params={"pattern": pattern}))
        ],
        models=[ModelSpec(name="m", dataset="d", entrypoint="mlstage.examples:fit_and_score")],
    )
    assert any("pattern" in p for p in pipeline.validate_sweep(sweep))


def test_good_shard_patterns_still_validate() -> None:
    assert ShardParams(pattern="sub/part-{index:04d}.tar").pattern == "sub/part-{index:04d}.tar"
    assert ShardParams().pattern == "shard-{index:06d}.tar"


# 3. secrets never leave the process unmasked --------------------------------------------
def test_preprocess_writes_out_no_secret_but_ids_use_real_params(
    ws: pipeline.Workspace, remote: Path, recipes: str
) -> None:
    spec = spec_of(remote, "hardening_recipes:with_token", hf_token=SECRET)
    resolved = pipeline.resolve(ws, spec)
    signed = spec.model_copy(update={"uri": f"https://host/data?x=1&sig={SECRET}"})
    prepared = pipeline.preprocess(ws, dataclasses.replace(resolved, spec=signed))

    other = load_recipe(RecipeSpec(name="hardening_recipes:with_token", params={"hf_token": "b"}))
    assert prepared.artifact.artifact_id == load_recipe(spec.recipe).artifact_id(resolved.version)
    assert prepared.artifact.artifact_id != other.artifact_id(resolved.version)
    info = (Path(prepared.artifact.uri) / "artifact.json").read_text()
    assert SECRET not in info and "host/data" in info
    db = sqlite3.connect(
        get_settings().resolved_state_url.get_secret_value().removeprefix("sqlite:///")
    )
    dump = "\n".join(db.iterdump())
    assert SECRET not in dump and "hf_token" in dump


@pytest.mark.parametrize(
    "text",
    [
        f"GET https://b.s3.amazonaws.com/k?X-Amz-Credential={SECRET}&X-Amz-Signature={SECRET}",
        f"https://acct.blob.core.windows.net/c/b?sv=2020&sig={SECRET}",
        f"https://d.cloudfront.net/f?Expires=1&Signature={SECRET}&Key-Pair-Id=K",
    ],
)
def test_scrub_text_masks_presigned_query_values(text: str) -> None:
    assert SECRET not in scrub_text(text)


def test_claim_details_and_watch_errors_are_scrubbed(ws: pipeline.Workspace, remote: Path) -> None:
    c = Coordination(ws.state)
    assert c.claim("toy", "v1")
    c.finish("toy", "v1", "failed", f"cannot GET https://h/x?sig={SECRET}: password={SECRET}")
    with ws.state.session() as s:
        from sqlmodel import select

        from mlstage.state.models import RestageClaim

        (claim,) = s.exec(select(RestageClaim)).all()
    assert claim.detail and SECRET not in claim.detail

    from mlstage.errors import SourceError

    def failing(spec: DatasetSpec) -> Any:
        raise SourceError(f"cannot list https://h/x?X-Amz-Signature={SECRET}")

    entry = WatchEntry(dataset=spec_of(remote, "shard"), settle_seconds=0)
    report = Watcher(ws.state, resolve=failing).check([entry])
    assert "toy" in report.errors and SECRET not in report.errors["toy"]


def test_event_payloads_are_scrubbed() -> None:
    ev = dataset_changed("d", None, "v2", f"https://h/x?sig={SECRET}&token={SECRET}", via="watch")
    assert SECRET not in json.dumps(ev.payload) and "https://h/x" in ev.payload["source"]


def test_sweep_summary_rows_are_scrubbed(ws: pipeline.Workspace) -> None:
    from flows.benchmark_sweep import outcome_of, summarize

    class Boom:
        def result(self) -> Any:
            raise RuntimeError(f"stage failed for https://h/x?sig={SECRET}")

    model = ModelSpec(name="m", dataset="d", entrypoint="mlstage.examples:fit_and_score")
    failed = outcome_of(model, Boom())  # type: ignore[arg-type]
    raw = pipeline.RunOutcome("-", "m2", "d", "failed", {}, f"--hf-token={SECRET}", None)
    rows = summarize(ws, [failed, raw], time.time())
    assert SECRET not in json.dumps(rows) and all(r["error"] for r in rows)


# 4. restage never re-runs with masked values --------------------------------------------
def test_restage_does_not_rerun_runs_with_masked_params(
    ws: pipeline.Workspace, remote: Path
) -> None:
    entry = WatchEntry(
        dataset=spec_of(remote, "shard", target_bytes=1024), settle_seconds=0, rerun_stale=True
    )
    model = ModelSpec(
        name="m",
        dataset="toy",
        entrypoint="mlstage.testing.workloads:count_files",
        # a secret in free text (a secret-named param is refused: it belongs under secrets)
        params={"extra_args": f"--hf-token={SECRET}"},
    )
    ready = pipeline.stage(ws, pipeline.preprocess(ws, pipeline.resolve(ws, entry.dataset)))
    old = pipeline.run(ws, model, ready)
    w = Watcher(ws.state)
    w.check([entry])
    (remote / "s-9.json").write_text("{}")
    (change,) = w.check([entry]).changes

    result = restage(ws, entry, change.new_version)
    assert result.status == "restaged" and result.reran == []
    assert [s.run_id for s in result.stale] == [old.run_id]
    ((stale, reason),) = result.not_rerun
    assert stale.run_id == old.run_id and "mask" in reason
    assert len(ws.state.runs()) == 1
    payload = result.events()[-1].payload
    assert payload["not_rerun"] == [{"run_id": old.run_id, "reason": reason}]


def test_masked_entrypoint_is_not_rerun() -> None:
    run = StaleRun("r", "m", "train {data_dir} --hf-token=***", {}, "v1", "completed")
    assert masked_reason(run) is not None
    assert masked_reason(dataclasses.replace(run, entrypoint="train {data_dir}")) is None


# 5. a failed run is always recorded failed ----------------------------------------------
@pytest.fixture
def ready(ws: pipeline.Workspace, remote: Path) -> pipeline.Ready:
    spec = spec_of(remote, "shard", target_bytes=1024)
    return pipeline.stage(ws, pipeline.preprocess(ws, pipeline.resolve(ws, spec)))


def test_literal_braces_in_a_command_are_refused_up_front() -> None:
    with pytest.raises(ConfigError, match="placeholder"):
        check_entrypoint('python -c "print({})" {data_dir}')
    with pytest.raises(ConfigError, match="placeholder"):
        check_entrypoint("train {data_dir} --lr {lr}")
    check_entrypoint("train {data_dir} --lr {lr}", {"lr": 0.1})
    check_entrypoint('python -c "print({{}})" {data_dir} {ready_list}')


def test_a_command_that_cannot_be_formatted_is_recorded_failed(
    ws: pipeline.Workspace, ready: pipeline.Ready
) -> None:
    model = ModelSpec(name="m", dataset="toy", entrypoint='python -c "print({})" {data_dir}')
    out = pipeline.run(ws, model, ready)
    assert out.status == "failed"
    assert ws.state.run(out.run_id).status == "failed"


def test_any_exception_in_a_run_is_recorded_failed(
    ws: pipeline.Workspace, ready: pipeline.Ready, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError(f"boom password={SECRET}")

    monkeypatch.setattr(ws.shared, "source", broken)
    monkeypatch.setattr(ws.cache, "lease", broken)  # the data is cached: leased by version
    model = ModelSpec(name="m", dataset="toy", entrypoint="mlstage.testing.workloads:count_files")
    out = pipeline.run(ws, model, ready)
    row = ws.state.run(out.run_id)
    assert out.status == row.status == "failed"
    assert "RuntimeError" in (out.error or "") and SECRET not in (out.error or "")

    import mlstage.stream

    monkeypatch.setattr(mlstage.stream, "open_stream", broken)
    out = pipeline.run_streaming(ws, model, ready.prepared)
    assert out.status == ws.state.run(out.run_id).status == "failed"


# 6. the notify checker survives errors --------------------------------------------------
def test_notify_checker_keeps_going_after_an_error(caplog: pytest.LogCaptureFixture) -> None:
    from mlstage.notify import Receiver
    from mlstage.watch import Change

    wl = WatchList(datasets=[WatchEntry(dataset=DatasetSpec(name="d", uri="s3://b/p/"))])
    change = Change("d", None, "v2", "s3://b/p/", 1, 1, 1)
    seen: list[Change] = []
    calls: list[int] = []
    got = threading.Event()

    class FlakyWatcher:
        def check(self, entries: Any, *, confirm: bool = True) -> WatchReport:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError(f"db down: password={SECRET}")
            return WatchReport(changes=[change])

    def on_change(c: Change) -> None:
        seen.append(c)
        got.set()

    caplog.set_level(logging.ERROR, logger="mlstage.notify")
    r = Receiver(wl, FlakyWatcher(), on_change, port=0, quiet_seconds=0, tick_seconds=0.01)  # type: ignore[arg-type]
    r.start()
    try:
        r.debouncer.touch("d")
        deadline = time.monotonic() + 10
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        r.debouncer.touch("d")
        assert got.wait(10), "the checker died after the first error"
    finally:
        r.stop()
    assert seen == [change]
    assert "db down" in caplog.text and SECRET not in caplog.text


# 7. preprocess keeps its raw data leased while the recipe runs --------------------------
def test_preprocess_input_cannot_be_evicted_between_stage_and_use(
    ws: pipeline.Workspace, remote: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_stage = ws.cache.stage
    dropped: list[bool] = []

    def stage_then_evicted(*args: Any, **kwargs: Any) -> Any:
        staged = real_stage(*args, **kwargs)
        dropped.append(ws.cache.drop(staged.fingerprint))  # another staging evicting it
        return staged

    monkeypatch.setattr(ws.cache, "stage", stage_then_evicted)
    prepared = pipeline.preprocess(ws, pipeline.resolve(ws, spec_of(remote, "identity")))
    assert dropped == [False] and len(prepared.artifact.manifest) == 3


# 8. preprocess_task uses the cache block ------------------------------------------------
def test_preprocess_task_passes_the_cache_block(monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.tasks as tasks

    used: list[tuple[Any, ...]] = []
    monkeypatch.setattr(tasks, "workspace", lambda *a: used.append(a) or "ws")
    monkeypatch.setattr(tasks.pipeline, "resolve", lambda ws, spec: "resolved")
    monkeypatch.setattr(tasks.pipeline, "preprocess", lambda ws, r, stage_here: "prepared")
    spec = DatasetSpec(name="d", uri="/data")
    assert tasks.preprocess_task.fn(spec, "shared", None, "cache") == "prepared"
    assert used == [("shared", "cache")]


# 9. DSN query secrets and artifact ids --------------------------------------------------
def test_mask_url_hides_query_passwords() -> None:
    masked = mask_url(f"postgresql://u:{SECRET}@h/db?password={SECRET}&sslmode=require")
    assert SECRET not in masked and "sslmode=require" in masked


@pytest.mark.parametrize("bad", ["../../etc", "A" * 32, "0" * 31, "0" * 32 + "/x", ""])
def test_artifact_ids_must_be_content_addresses(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="artifact id"):
        check_artifact_id(bad)
    with pytest.raises(ConfigError):
        FolderSharedTier(tmp_path).get(bad)
    with pytest.raises(ConfigError):
        S3SharedTier("s3://b/p").get(bad)
    assert check_artifact_id("0123456789abcdef" * 2)
