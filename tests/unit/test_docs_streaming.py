"""docs/streaming.md's snippets run as written (only the URI, the artifact id and train_on are
filled in), and the ready-list reader it shows follows a real stream's ready list."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from mlstage import pipeline
from mlstage.settings import get_settings
from mlstage.specs import DatasetSpec, RecipeSpec
from mlstage.testing.workloads import make_dataset

DOC = Path(__file__).resolve().parents[2] / "docs" / "streaming.md"


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_streaming_snippet_runs_from_a_uri(home: Path, tmp_path: Path) -> None:
    data = make_dataset(tmp_path, "train", 7)
    code = snippets()[0].replace("s3://my-bucket/imagenet/train/", str(data))
    seen: list[Path] = []
    scope = {"train_on": seen.append}
    exec(compile(code, str(DOC), "exec"), scope)
    assert sorted(p.name for p in seen) == sorted(p.name for p in data.iterdir())
    assert scope["cache"].lookup(scope["staged"].fingerprint) is not None


def test_the_streaming_snippet_runs_from_an_artifact(home: Path, tmp_path: Path) -> None:
    ws = pipeline.Workspace.from_settings(get_settings())
    spec = DatasetSpec(
        name="d",
        uri=str(make_dataset(tmp_path, "d", 9, lines=40)),
        recipe=RecipeSpec(params={"target_bytes": 1024}),
    )
    prepared = pipeline.preprocess(ws, pipeline.resolve(ws, spec))
    seen: list[Path] = []
    scope = {"train_on": seen.append, "ARTIFACT_ID": prepared.artifact.artifact_id}
    exec(compile(snippets()[1], str(DOC), "exec"), scope)
    assert len(seen) == len(prepared.artifact.manifest) > 1


def test_the_ready_list_reader_follows_a_stream(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlstage.settings import open_cache
    from mlstage.sources import open_source
    from mlstage.stream import open_stream

    data = make_dataset(tmp_path, "r", 5)
    source = open_source(str(data))
    with open_stream(open_cache(get_settings()), source, source.resolve()) as stream:
        stream.wait()  # complete: the ready list ends with {"end": "complete"}
        lines = stream.view.ready_list.read_text().splitlines()
        assert lines[-1] == '{"end": "complete"}' and len(lines) == 6
        argv = ["train.py", "--data", str(stream.data_dir), "--ready", str(stream.view.ready_list)]
        monkeypatch.setattr(sys, "argv", argv)
        seen: list[Path] = []
        exec(compile(snippets()[2], str(DOC), "exec"), {"train_on": seen.append})
    assert sorted(p.name for p in seen) == sorted(p.name for p in data.iterdir())
