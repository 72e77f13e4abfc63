"""The cache under real processes staging from a real S3 endpoint (moto on 127.0.0.1).

Requests are counted at the fault proxy (``mlstage.testing.faults``) in front of moto, so
"served once" is measured at the server side. Crashes are real ``kill -9``s of child
processes, delivered at chosen points (the child parks itself there and the test kills it).

Run as a script, this file is the child: ``python test_cache_procs.py MODE ARGS_JSON``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlstage.testing.faults import FaultProxy, fault_proxy

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve()


# -- requests counted at a proxy in front of moto ----------------------------------------
@pytest.fixture
def proxy(s3_env: Any) -> Iterator[FaultProxy]:
    with fault_proxy(s3_env.url) as p:
        p.configure(latency=0.02)  # slow enough that the stagers overlap
        yield p


def object_gets(proxy: FaultProxy, prefix: str) -> dict[str, int]:
    """GETs that reached the endpoint for objects under ``prefix`` (``/bucket/ds/``), by path."""
    return {
        request.removeprefix("GET "): n
        for request, n in proxy.counts().items()
        if request.startswith(f"GET {prefix}")
    }


def put_dataset(
    client: Any, bucket: str, prefix: str, n: int, size: int = 3000
) -> dict[str, bytes]:
    files = {f"part{i % 3}/f{i:03d}.bin": os.urandom(size) for i in range(n)}
    for rel, data in files.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{rel}", Body=data)
    return files


def child(mode: str, args: dict[str, Any], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HERE), mode, json.dumps(args)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early: {proc.communicate()}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def proxy_env(proxy: FaultProxy) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": proxy.url}


# -- tests ----------------------------------------------------------------------------------
def test_eight_processes_one_download_eight_identical_trees(
    proxy: FaultProxy, bucket: str, s3_env: Any, tmp_path: Path
) -> None:
    files = put_dataset(s3_env.client(), bucket, "ds", 24)
    go = tmp_path / "go"
    procs = [
        child(
            "stage",
            {
                "cache": str(tmp_path / "cache"),
                "uri": f"s3://{bucket}/ds",
                "go": str(go),
                "ready": str(tmp_path / f"ready{i}"),
                "workers": 4,
            },
            proxy_env(proxy),
        )
        for i in range(8)
    ]
    for i, p in enumerate(procs):
        wait_for(tmp_path / f"ready{i}", p)
    go.touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(json.loads(out))
    gets = object_gets(proxy, f"/{bucket}/ds/")
    assert len(gets) == 24 and set(gets.values()) == {1}, gets
    assert sum(not o["hit"] for o in outs) == 1
    expected = {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
    assert all(o["tree"] == expected for o in outs)
    assert len({o["path"] for o in outs}) == 1


def test_eviction_under_a_small_limit_spares_a_dataset_leased_by_another_process(
    bucket: str, s3_env: Any, tmp_path: Path
) -> None:
    client = s3_env.client()
    put_dataset(client, bucket, "a", 4, size=1000)
    put_dataset(client, bucket, "b", 4, size=1000)
    put_dataset(client, bucket, "c", 4, size=1000)
    from mlstage.cache import LocalCache
    from mlstage.sources.s3 import S3Source

    cache = LocalCache(tmp_path / "cache", limit_bytes=9000)
    sources = {n: S3Source(bucket, n) for n in "abc"}
    manifests = {n: s.resolve() for n, s in sources.items()}
    a = cache.stage(sources["a"], manifests["a"])
    holder = child(
        "lease",
        {"cache": str(tmp_path / "cache"), "fp": a.fingerprint, "ready": str(tmp_path / "held")},
        {},
    )
    wait_for(tmp_path / "held", holder)
    b = cache.stage(sources["b"], manifests["b"])
    c = cache.stage(sources["c"], manifests["c"])  # over the limit: b is evicted, a is leased
    assert cache.lookup(a.fingerprint) is not None
    assert cache.lookup(b.fingerprint) is None
    assert cache.lookup(c.fingerprint) is not None
    assert cache.stats().bytes <= 9000
    os.kill(holder.pid, signal.SIGKILL)  # the kernel drops the lease with the process
    holder.wait()
    assert sorted(cache.evict(target_bytes=0)) == sorted([a.fingerprint, c.fingerprint])
    assert cache.verify().problems == []


@pytest.mark.parametrize(
    "kill_at", ["ingest", "ingest-in-transaction", "tree-built", "tree-renamed"]
)
def test_kill_9_during_staging_then_the_next_run_completes(
    kill_at: str, proxy: FaultProxy, bucket: str, s3_env: Any, tmp_path: Path
) -> None:
    files = put_dataset(s3_env.client(), bucket, "ds", 12)
    marker = tmp_path / "parked"
    victim = child(
        "stage",
        {
            "cache": str(tmp_path / "cache"),
            "uri": f"s3://{bucket}/ds",
            "kill_at": kill_at,
            "marker": str(marker),
            "workers": 2,
        },
        proxy_env(proxy),
    )
    wait_for(marker, victim)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()

    before = sum(object_gets(proxy, f"/{bucket}/ds/").values())
    survivor = child(
        "stage", {"cache": str(tmp_path / "cache"), "uri": f"s3://{bucket}/ds"}, proxy_env(proxy)
    )
    out, err = survivor.communicate(timeout=120)
    assert survivor.returncode == 0, err
    result = json.loads(out)
    assert result["tree"] == {rel: hashlib.sha256(d).hexdigest() for rel, d in files.items()}
    from mlstage.cache import LocalCache

    cache = LocalCache(tmp_path / "cache")
    assert cache.verify().problems == []
    assert not list((cache.root / "datasets").glob(".tmp-*"))
    assert cache.stats().objects == 12
    # what the victim had already stored was not fetched again
    refetched = sum(object_gets(proxy, f"/{bucket}/ds/").values()) - before
    if kill_at == "ingest":
        assert refetched <= 12 - 5  # five objects were indexed before the kill
    elif kill_at != "ingest-in-transaction":  # (that one's object had no row yet)
        assert refetched == 0


@pytest.mark.parametrize(
    "kill_at", ["evict-tree-in-transaction", "evict-object-in-transaction", "evict-after-commit"]
)
def test_kill_9_during_eviction_then_recovery(
    kill_at: str, bucket: str, s3_env: Any, tmp_path: Path
) -> None:
    files = put_dataset(s3_env.client(), bucket, "ds", 10, size=500)
    from mlstage.cache import LocalCache
    from mlstage.sources.s3 import S3Source

    cache = LocalCache(tmp_path / "cache")
    src = S3Source(bucket, "ds")
    manifest = src.resolve()
    cache.stage(src, manifest)
    marker = tmp_path / "parked"
    victim = child(
        "evict", {"cache": str(cache.root), "kill_at": kill_at, "marker": str(marker)}, {}
    )
    wait_for(marker, victim)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()

    recovered = LocalCache(cache.root)
    assert recovered.verify().problems == []
    if kill_at == "evict-tree-in-transaction":  # never committed: the dataset is still whole
        assert recovered.lookup(manifest.fingerprint) is not None
    staged = recovered.stage(src, manifest)
    assert tree_digest(staged.path) == {
        rel: hashlib.sha256(d).hexdigest() for rel, d in files.items()
    }
    assert recovered.verify().problems == []
    recovered.gc()
    assert not any((cache.root / "tmp" / "trash").iterdir())


def test_cli_verify_detects_and_repairs_corruption(
    bucket: str, s3_env: Any, tmp_path: Path
) -> None:
    files = put_dataset(s3_env.client(), bucket, "ds", 3, size=200)
    env = {**os.environ, "MLSTAGE_CACHE_DIR": str(tmp_path / "cache")}
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from mlstage.cli import main; main()",
            "stage",
            f"s3://{bucket}/ds",
            "--json",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    from mlstage.cache import LocalCache

    cache = LocalCache(tmp_path / "cache")
    (row,) = cache.index.datasets_lru()
    victim = cache.dataset_path(row.fingerprint) / "part0/f000.bin"
    os.chmod(victim, 0o644)
    with open(victim, "r+b") as f:
        f.write(b"\xff" if files["part0/f000.bin"][:1] != b"\xff" else b"\x00")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from mlstage.cli import main; main()", "cache", *args],
            env=env,
            capture_output=True,
            text=True,
        )

    found = cli("verify", "--json")
    assert found.returncode == 1
    assert [p["kind"] for p in json.loads(found.stdout)["problems"]] == ["corrupt_file"]
    fixed = cli("verify", "--repair", "--json")
    assert fixed.returncode == 0, fixed.stderr
    assert victim.read_bytes() == files["part0/f000.bin"]
    assert cli("verify").returncode == 0
    stats = json.loads(cli("stats", "--json").stdout)
    assert stats["datasets"] == 1 and stats["objects"] == 3
    assert len(json.loads(cli("ls", "--json").stdout)) == 1
    assert json.loads(cli("gc", "--json").stdout)["objects_removed"] == 0
    assert json.loads(cli("evict", "--to-bytes", "0", "--json").stdout)["evicted"] == [
        row.fingerprint
    ]


# -- the child -----------------------------------------------------------------------------
def _park(marker: str) -> None:
    Path(marker).touch()
    while True:
        time.sleep(60)


def _child_main(mode: str, args: dict[str, Any]) -> None:
    from mlstage.cache import LocalCache, eviction, objects, trees
    from mlstage.sources import open_source

    cache = LocalCache(Path(args["cache"]), limit_bytes=int(args.get("limit", 0)))
    kill_at = args.get("kill_at")
    if mode == "lease":
        with cache.lease(args["fp"]):
            _park(args["ready"])
    if mode == "evict":
        real_rename = os.rename
        if kill_at.endswith("in-transaction"):
            kind = "ds-" if "tree" in kill_at else "obj-"

            def rename(src: Any, dst: Any) -> None:
                real_rename(src, dst)
                if "trash" in str(dst) and kind in str(dst):
                    _park(args["marker"])  # moved aside, transaction not committed

            eviction.os.rename = rename  # type: ignore[assignment]
        else:

            def rmtree(path: Path) -> None:
                if "trash" in str(path):
                    _park(args["marker"])

            eviction.rmtree = rmtree  # type: ignore[assignment]
        cache.evict(target_bytes=0)
        raise SystemExit("eviction finished without reaching the kill point")
    if kill_at == "ingest":
        real_ingest = objects.Objects.ingest
        seen = [0]

        def ingest(self: Any, *a: Any) -> Any:
            rows = real_ingest(self, *a)
            seen[0] += 1
            if seen[0] == 5:
                _park(args["marker"])
            return rows

        objects.Objects.ingest = ingest  # type: ignore[method-assign]
    elif kill_at == "ingest-in-transaction":
        real_replace = os.replace

        def replace(src: Any, dst: Any) -> None:
            real_replace(src, dst)
            if "/objects/" in str(dst):
                _park(args["marker"])  # object file placed, its row not committed

        objects.os.replace = replace  # type: ignore[assignment]
    elif kill_at == "tree-built":
        real_publish = trees.Trees.build

        def build(self: Any, *a: Any) -> None:
            real_publish(self, *a)
            _park(args["marker"])  # tree built under .tmp-<fp>, not renamed

        trees.Trees.build = build  # type: ignore[method-assign]
    elif kill_at == "tree-renamed":
        real = trees.Trees.publish

        def publish(self: Any, fp: str, *a: Any) -> bytes:
            sealed = real(self, fp, *a)
            _park(args["marker"])  # tree in place, index still says 'staging'
            return sealed

        trees.Trees.publish = publish  # type: ignore[method-assign]

    source = open_source(args["uri"])
    manifest = source.resolve()
    if "ready" in args:
        Path(args["ready"]).touch()
        while not Path(args["go"]).exists():
            time.sleep(0.01)
    staged = cache.stage(source, manifest, workers=int(args.get("workers", 4)))
    print(
        json.dumps({"path": str(staged.path), "hit": staged.hit, "tree": tree_digest(staged.path)})
    )


if __name__ == "__main__":
    _child_main(sys.argv[1], json.loads(sys.argv[2]))
