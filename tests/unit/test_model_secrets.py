"""A model's secrets: named as Secret blocks in its spec, loaded right before its entrypoint is
called, never recorded; a literal under a secret-looking parameter name is refused."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlmodel import SQLModel, select

from mlstage import pipeline
from mlstage.redact import scrub_params
from mlstage.restage import restage
from mlstage.settings import get_settings
from mlstage.specs import DatasetSpec, ModelSpec, RecipeSpec, SweepSpec
from mlstage.state.claims import Coordination
from mlstage.watch import WatchEntry

TOKEN = "hf_Sup3rS3cretT0ken"


@pytest.fixture
def secret_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A module ``secret_models`` whose ``fit`` writes the token it was given to ``out``."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "secret_models.py").write_text(
        textwrap.dedent(
            """
            from pathlib import Path

            def fit(data_dir, hf_token, out, fail=False):
                Path(out).write_text(hf_token)
                if fail:
                    raise RuntimeError(f"login refused for token {hf_token}")
                return {"score": 1.0}
            """
        )
    )
    monkeypatch.syspath_prepend(str(mods))
    sys.modules.pop("secret_models", None)
    return tmp_path / "got.txt"


@pytest.mark.parametrize(
    "params",
    [
        {"hf_token": TOKEN},
        {"db": {"password": TOKEN}},
        {"clients": [{"api_key": TOKEN}]},
        {"hf_token": "secret:hf-token"},  # a reference belongs under secrets, too
    ],
)
def test_a_literal_under_a_secret_name_is_refused_without_repeating_it(params: dict) -> None:
    with pytest.raises(ValidationError) as info:
        ModelSpec(name="m", dataset="d", entrypoint="x:y", params=params)
    assert TOKEN not in str(info.value) and "secrets=" in str(info.value)
    with pytest.raises(ValidationError) as info:  # nor when the spec is part of a sweep
        SweepSpec(
            datasets=[DatasetSpec(name="d", uri="/data")],
            models=[{"name": "m", "dataset": "d", "entrypoint": "x:y", "params": params}],
        )
    assert TOKEN not in str(info.value)


def test_what_holds_no_secret_is_accepted() -> None:
    m = ModelSpec(
        name="m",
        dataset="d",
        entrypoint="x:y",
        params={"max_tokens": 128, "use_auth": True, "hf_token": None, "lr": 0.1},
        secrets={"hf_token2": "hf-token"},
    )
    assert m.param_names == {"max_tokens", "use_auth", "hf_token", "lr", "hf_token2"}


@pytest.mark.parametrize(
    ("secrets", "match"),
    [
        ({"hf_token": TOKEN}, "no Prefect block name"),  # the secret itself, not a block name
        ({"not a name": "blk"}, "not a parameter name"),
        ({"lr": "blk"}, "both in params and in secrets"),
    ],
)
def test_secrets_name_blocks(secrets: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match) as info:
        ModelSpec(name="m", dataset="d", entrypoint="x:y", params={"lr": 1}, secrets=secrets)
    assert TOKEN not in str(info.value)


def test_a_run_records_the_block_and_the_entrypoint_gets_the_value(
    home: Path, tmp_path: Path, secret_models: Path
) -> None:
    ws = pipeline.Workspace.from_settings(get_settings())
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.bin").write_bytes(b"a")
    spec = DatasetSpec(name="d", uri=str(tmp_path / "data"), recipe=RecipeSpec(name="identity"))
    ready = pipeline.stage(ws, pipeline.preprocess(ws, pipeline.resolve(ws, spec)))
    model = ModelSpec(
        name="m",
        dataset="d",
        entrypoint="secret_models:fit",
        params={"out": str(secret_models)},
        secrets={"hf_token": "hf-token"},
    )
    assert pipeline.validate_models([model]) == []
    loaded: list[str] = []

    def resolve(block: str) -> str:
        loaded.append(block)
        return TOKEN

    ok = pipeline.run(ws, model, ready, resolve_secret=resolve)
    assert ok.status == "completed" and secret_models.read_text() == TOKEN
    assert loaded == ["hf-token"]
    failing = model.model_copy(update={"params": {**model.params, "fail": True}})
    bad = pipeline.run(ws, failing, ready, resolve_secret=resolve)
    assert bad.status == "failed" and "login refused" in (bad.error or "")
    assert TOKEN not in (bad.error or "")  # masked even where no rule would spot it
    nothing = pipeline.run(ws, model, ready)  # no resolver: a failed run that says why
    assert nothing.status == "failed" and "Secret block 'hf-token'" in (nothing.error or "")

    rows = {r.run_id: r for r in ws.state.runs()}
    assert rows[ok.run_id].params == {"out": str(secret_models), "hf_token": "secret:hf-token"}
    dump = []
    with ws.state.engine.connect() as conn:
        for table in SQLModel.metadata.sorted_tables:
            dump += [repr(tuple(r)) for r in conn.execute(select(table))]
    assert TOKEN not in "\n".join(dump)


def test_a_stale_run_with_secrets_reruns_only_with_a_resolver(
    home: Path, tmp_path: Path, secret_models: Path
) -> None:
    ws = pipeline.Workspace.from_settings(get_settings())
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.bin").write_bytes(b"a")
    spec = DatasetSpec(name="d", uri=str(tmp_path / "data"), recipe=RecipeSpec(name="identity"))
    ready = pipeline.stage(ws, pipeline.preprocess(ws, pipeline.resolve(ws, spec)))
    model = ModelSpec(
        name="m",
        dataset="d",
        entrypoint="secret_models:fit",
        params={"out": str(secret_models)},
        secrets={"hf_token": "hf-token"},
    )
    assert pipeline.run(ws, model, ready, resolve_secret=lambda b: TOKEN).status == "completed"
    (tmp_path / "data" / "b.bin").write_bytes(b"b")
    new = pipeline.resolve(ws, spec).version
    entry = WatchEntry(dataset=spec, settle_seconds=0, rerun_stale=True)

    without = restage(ws, entry, new)
    assert without.reran == [] and "Secret blocks" in without.not_rerun[0][1]
    secret_models.unlink()
    Coordination(ws.state).finish("d", new, "failed", "claimed again below")
    with_resolver = restage(ws, entry, new, resolve_secret=lambda b: TOKEN)
    assert [r.status for r in with_resolver.reran] == ["completed"]
    assert secret_models.read_text() == TOKEN


def test_scrub_params_keeps_secret_references_and_masks_values() -> None:
    params = {"hf_token": "secret:hf-token", "db": "secret:db-url", "password": "secret:Not ok"}
    assert scrub_params(params) == {
        "hf_token": "secret:hf-token",
        "db": "secret:db-url",
        "password": "***",
    }
    recorded = ModelSpec(
        name="m", dataset="d", entrypoint="x:y", secrets={"hf_token": "hf-token"}
    ).recorded_params()
    again = ModelSpec.from_record(name="m", dataset="d", entrypoint="x:y", params=recorded)
    assert again.secrets == {"hf_token": "hf-token"} and again.params == {}
    assert json.dumps(recorded) == '{"hf_token": "secret:hf-token"}'
