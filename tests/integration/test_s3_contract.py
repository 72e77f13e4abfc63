"""One contract, every S3 server: the same tests against moto, rclone's ``serve s3`` and moto
behind the fault proxy (random 503s, 500s, resets and cut bodies on every GET).

Both servers are started by the tests on 127.0.0.1 (session fixtures). Where the servers
differ, the test says which behaviour each must show (``Server``): rclone ignores
``If-Match`` and ``If-None-Match`` and answers ranges with 200, and mlstage must still stage
the right bytes, detect a changed object (by its checksum), and never mix two publishers'
files.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlstage.cache import LocalCache
from mlstage.errors import AccessDenied, IntegrityError, ObjectChanged, ObjectNotFound
from mlstage.retry import RetryPolicy
from mlstage.shared import S3SharedTier
from mlstage.sources.s3 import S3Source
from mlstage.store import Bucket, StoreConfig
from mlstage.testing.faults import Fault, FaultProxy, fault_proxy
from mlstage.testing.s3 import S3Endpoint, moto_server, signing_user

pytestmark = pytest.mark.integration

FAST = RetryPolicy(attempts=8, base_seconds=0.005, max_seconds=0.05)
MB = 1024 * 1024
SERVERS = ["moto", "rclone", "moto+faults"]


@dataclass(frozen=True)
class Server:
    """An S3 server under test: where mlstage talks to it, and what it honours."""

    name: str
    url: str  # what mlstage is pointed at
    direct: S3Endpoint  # where the tests put their data (never faulted)
    proxy: FaultProxy | None = None
    honours_if_match: bool = True
    honours_if_none_match: bool = True
    answers_ranges_206: bool = True

    def env(self) -> dict[str, str]:
        return {**self.direct.env(), "AWS_ENDPOINT_URL": self.url}

    def new_bucket(self) -> str:
        name = f"mlstage-contract-{uuid.uuid4().hex[:10]}"
        self.direct.client().create_bucket(Bucket=name)
        return name

    def upload(self, bucket: str, files: dict[str, bytes]) -> None:
        client = self.direct.client()
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]),
                    files.items(),
                )
            )


@pytest.fixture(scope="module")
def faulty_moto(s3_endpoint: S3Endpoint) -> Iterator[FaultProxy]:
    with fault_proxy(s3_endpoint.url) as proxy:
        yield proxy


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Server:
    """Each server in turn, with the standard AWS environment pointed at it."""
    name = request.param
    if name == "rclone":
        rclone: S3Endpoint = request.getfixturevalue("rclone_endpoint")
        found = Server(
            name,
            rclone.url,
            rclone,
            honours_if_match=False,
            honours_if_none_match=False,
            answers_ranges_206=False,
        )
    else:
        moto: S3Endpoint = request.getfixturevalue("s3_endpoint")
        proxy = request.getfixturevalue("faulty_moto") if name == "moto+faults" else None
        found = Server(name, proxy.url if proxy else moto.url, moto, proxy)
        if proxy is not None:
            proxy.reset()
            kinds = ("slowdown", "error500", "reset", "truncate")
            proxy.configure(faults=[Fault(k, method="GET", probability=0.04) for k in kinds])
    for k, v in found.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return found


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): _sha(p.read_bytes()) for p in root.rglob("*") if p.is_file()
    }


def _stage(source: S3Source, tmp: Path, **kw: Any) -> dict[str, str]:
    cache = LocalCache(tmp / "cache")
    staged = cache.stage(source, source.resolve(), retry=FAST, **kw)
    return _tree(staged.path)


# -- listing ----------------------------------------------------------------------------------
_TREE_LAYOUT: dict[str, Any] = {}


def _tree_bucket(server: Server) -> str:
    """A bucket (made once per server) whose prefix ``tree/`` holds 1,005 one-byte objects:
    ``tree/a/`` alone is 1,001 (two listing pages), beside sub-prefixes and loose files."""
    key = server.direct.url
    if key not in _TREE_LAYOUT:
        bucket = server.new_bucket()
        files = {f"tree/a/{i:04d}.bin": b"a" for i in range(1001)}
        files.update({"tree/0.txt": b"0", "tree/b.txt": b"b", "tree/b/x.bin": b"x", "tree/c": b"c"})
        server.upload(bucket, files)
        _TREE_LAYOUT[key] = bucket
    return _TREE_LAYOUT[key]


def test_listing_pages_past_1000_keys_in_key_order(server: Server) -> None:
    bucket = _tree_bucket(server)
    source = S3Source(bucket, "tree", retry=FAST)
    paths = [e.path for e in source.resolve().entries]
    expected = ["0.txt", *[f"a/{i:04d}.bin" for i in range(1001)], "b.txt", "b/x.bin", "c"]
    assert paths == expected
    assert source.listed == len(expected)  # the CLI's progress counter
    flat = S3Source(bucket, "tree/a/", retry=FAST).resolve()  # one flat prefix, two pages
    assert len(flat) == 1001 and flat.entries[-1].path == "1000.bin"


def test_odd_keys_stage_byte_for_byte(server: Server, tmp_path: Path) -> None:
    bucket = server.new_bucket()
    names = ["a b.txt", "ünï/çødé.bin", "a+b=c.txt", "100%.txt", "x%20y.txt", "tilde~.txt"]
    files = {f"odd/{n}": n.encode() * 3 for n in names}
    server.upload(bucket, files)
    got = _stage(S3Source(bucket, "odd", retry=FAST), tmp_path)
    assert got == {n: _sha(n.encode() * 3) for n in names}


def test_small_and_large_objects_stage_verified(server: Server, tmp_path: Path) -> None:
    bucket = server.new_bucket()
    files = {"mix/small.bin": os.urandom(10_000), "mix/large.bin": os.urandom(3 * MB + 17)}
    server.upload(bucket, files)
    source = S3Source(bucket, "mix", retry=FAST)
    got = _stage(source, tmp_path, workers=4, part_size=MB)
    assert got == {k.removeprefix("mix/"): _sha(v) for k, v in files.items()}
    # large objects as parallel ranged GETs where the server answers ranges with 206; else
    # whole, one verified stream each
    assert source.supports_ranges is server.answers_ranges_206
    if server.proxy is not None:
        assert server.proxy.count("GET", f"/{bucket}/mix/large.bin") >= 4


def test_an_object_changed_after_listing_is_never_staged(server: Server, tmp_path: Path) -> None:
    bucket = server.new_bucket()
    server.upload(bucket, {"chg/x.bin": b"one" * 1000, "chg/y.bin": b"y"})
    source = S3Source(bucket, "chg", retry=FAST)
    manifest = source.resolve()
    server.upload(bucket, {"chg/x.bin": b"two" * 1000})  # same size, other bytes
    cache = LocalCache(tmp_path / "cache")
    # If-Match refuses the read where the server honours it; else the listed MD5 does
    expected = ObjectChanged if server.honours_if_match else IntegrityError
    with pytest.raises(expected, match="x.bin"):
        cache.stage(source, manifest, retry=FAST)
    assert cache.lookup(manifest.fingerprint) is None


def test_missing_bucket_and_empty_prefix_are_not_found(server: Server) -> None:
    with pytest.raises(ObjectNotFound, match=r"s3://no-such-bucket-\w+/p/"):
        S3Source(f"no-such-bucket-{uuid.uuid4().hex[:6]}", "p", retry=FAST).resolve()
    with pytest.raises(ObjectNotFound, match="no objects under this prefix"):
        S3Source(_tree_bucket(server), "nothing-here", retry=FAST).resolve()


# -- credentials ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def signing_moto() -> Iterator[dict[str, str]]:
    """moto checking every signature like AWS: the environment of its only user."""
    with moto_server(check_signatures=True) as endpoint:
        yield signing_user(endpoint)


def test_refused_credentials_are_one_line_naming_the_prefix(
    server: Server, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "wrong-secret-value-1234"
    if server.name == "moto":  # moto only checks signatures when asked to
        env: dict[str, str] = request.getfixturevalue("signing_moto")
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        import boto3

        bucket = f"mlstage-signed-{uuid.uuid4().hex[:8]}"
        boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        ).create_bucket(Bucket=bucket)
    elif server.proxy is not None:  # the proxy answers 403 InvalidAccessKeyId
        bucket = _tree_bucket(server)
        server.proxy.configure(faults=[Fault("deny", method="*")])
    else:
        bucket = _tree_bucket(server)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    with pytest.raises(AccessDenied) as refused:
        S3Source(bucket, "tree", retry=FAST).resolve()
    said = str(refused.value)
    assert said.startswith(f"s3://{bucket}/tree/: listing: access denied (HTTP 403 ")
    assert any(code in said for code in ("SignatureDoesNotMatch", "InvalidAccessKeyId"))
    assert "\n" not in said and secret not in said and "hint:" in said


# -- writes -----------------------------------------------------------------------------------
def test_put_get_delete_and_create_only(server: Server, tmp_path: Path) -> None:
    bucket = Bucket(server.new_bucket(), StoreConfig.from_env(), retry=FAST)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 * MB + 5))  # above obstore's 5 MB: a multipart upload
    bucket.put("w/big.bin", big)
    bucket.put("w/small.txt", b"small")
    assert bucket.get("w/small.txt") == b"small"
    size = big.stat().st_size
    # one read is one attempt (its caller retries: here, by hand)
    whole = FAST.call(lambda: b"".join(bucket.read("w/big.bin", 0, size, size=size, etag=None)))
    assert _sha(whole) == _sha(big.read_bytes())
    assert bucket.put("w/once.txt", b"first", create_only=True) is True
    again = bucket.put("w/once.txt", b"second", create_only=True)
    assert again is (not server.honours_if_none_match)  # rclone: a plain PUT, last wins
    bucket.delete(["w/small.txt", "w/once.txt"])
    with pytest.raises(ObjectNotFound, match="w/small.txt"):
        bucket.get("w/small.txt")
    assert [o.key for page in bucket.pages("w/") for o in page] == ["w/big.bin"]


def test_racing_publishers_never_mix_their_files(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two nodes publish one artifact from different bytes: the first manifest wins where
    the server honours If-None-Match, the last elsewhere; either way one publisher's files."""
    bucket = server.new_bucket()
    first, second = tmp_path / "first", tmp_path / "second"
    for out, tag in ((first, b"A"), (second, b"B")):
        out.mkdir()
        (out / "x.bin").write_bytes(tag * 1000)
        (out / "y.bin").write_bytes(tag * 2000)
    artifact_id = "cd" * 16
    tier = S3SharedTier(f"s3://{bucket}/shared")
    tier.publish(artifact_id, first, {"dataset": "d"})
    late = S3SharedTier(f"s3://{bucket}/shared")
    looks: list[str] = []

    def looked_too_early(aid: str):  # type: ignore[no-untyped-def]
        looks.append(aid)  # the second publisher looked before the first had finished
        return None if len(looks) == 1 else tier.get(aid)

    monkeypatch.setattr(late, "get", looked_too_early)
    late.publish(artifact_id, second, {"dataset": "d"})
    artifact = tier.get(artifact_id)
    assert artifact is not None
    staged = LocalCache(tmp_path / "cache").stage(
        tier.source(artifact), artifact.manifest, retry=FAST
    )
    winner = b"A" if server.honours_if_none_match else b"B"
    assert _tree(staged.path) == {"x.bin": _sha(winner * 1000), "y.bin": _sha(winner * 2000)}


# -- the command line -------------------------------------------------------------------------
def test_the_cli_stages_from_the_server(server: Server, tmp_path: Path) -> None:
    bucket = server.new_bucket()
    files = {"cli/a.txt": b"a" * 100, "cli/sub/b.bin": os.urandom(2 * MB + 1)}
    server.upload(bucket, files)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLSTAGE_")},
        **server.env(),
        "MLSTAGE_HOME": str(tmp_path / "home"),
        "MLSTAGE_PART_SIZE": str(MB),
    }
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "mlstage",
        "stage",
        f"s3://{bucket}/cli",
        "--to",
        str(out),
        "--json",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["files"] == 2
    assert _tree(out) == {k.removeprefix("cli/"): _sha(v) for k, v in files.items()}
