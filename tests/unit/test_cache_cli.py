"""``mlstage cache`` commands against a cache in a temporary MLSTAGE_HOME."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from mlstage.cache import LocalCache
from mlstage.cli.cache_cmd import app
from mlstage.errors import ConfigError
from mlstage.settings import get_settings
from mlstage.sources.local import FolderSource


def test_lease_blocks_evict_until_released(home: Path, tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    (data / "f").write_bytes(b"12345")
    cache = LocalCache(get_settings().resolved_cache_dir)
    src = FolderSource(data)
    fp = cache.stage(src, src.resolve()).fingerprint
    runner = CliRunner()

    held = runner.invoke(app, ["lease", fp, "--ttl", "600", "--json"])
    assert held.exit_code == 0, held.output
    lease_id = json.loads(held.output)["id"]
    listed = json.loads(runner.invoke(app, ["ls", "--json"]).output)
    assert listed[0]["fingerprint"] == fp and len(listed[0]["leases"]) == 1

    refused = runner.invoke(app, ["evict", fp])
    assert refused.exit_code == 1
    assert json.loads(runner.invoke(app, ["stats", "--json"]).output)["datasets"] == 1

    assert json.loads(runner.invoke(app, ["release", str(lease_id), "--json"]).output) == {
        "released": True
    }
    assert runner.invoke(app, ["evict", "--to-bytes", "-5"]).exit_code == 2  # a usage error
    too_short = runner.invoke(app, ["evict", fp[:5]])
    assert isinstance(too_short.exception, ConfigError) and "too short" in str(too_short.exception)
    evicted = runner.invoke(app, ["evict", fp[:12], "--json"])  # as ls and stage print it
    assert evicted.exit_code == 0 and json.loads(evicted.output)["evicted"] == [fp]
    stats = json.loads(runner.invoke(app, ["stats", "--json"]).output)
    assert stats["datasets"] == 0 and stats["bytes"] == 0
    assert runner.invoke(app, ["verify", "--json"]).exit_code == 0
