"""The cache under hostile or unlucky conditions, driven as a user would: the `mlstage` CLI in
real processes, jobs writing into their data as root, a full disk, a read-only disk.

The disk cases mount a small tmpfs (root and mount privileges, as on CI's machine); where the
machine cannot mount they are skipped with that reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlstage.cache import LocalCache
from mlstage.errors import CacheError
from mlstage.sources.local import FolderSource
from mlstage.testing.s3 import S3Endpoint

pytestmark = pytest.mark.integration
MLSTAGE = str(Path(sys.executable).parent / "mlstage")


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSTAGE_")}
    return {**env, "MLSTAGE_HOME": str(home), **extra}


def _mlstage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MLSTAGE, *args], env=env, capture_output=True, text=True, timeout=180, check=False
    )


def _tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        assert not p.is_symlink(), p
        if p.is_file():
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _dataset(root: Path, n: int = 6) -> Path:
    for i in range(n):
        p = root / f"part{i % 2}" / f"f{i:03d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(4096 + i))
    return root


def _one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode != 0, res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("mlstage: error: ") and "(hint: " in lines[0], lines[0]
    return lines[0]


JOB = """
import os, sys
data = sys.argv[1]
assert os.geteuid() == 0, "this job runs as root: mode bits do not stop it"
with open(os.path.join(data, "part0/f000.bin"), "r+b") as f:  # overwrite in place
    f.write(b"written by a job")
with open(os.path.join(data, "part1/f001.bin"), "r+b") as f:  # truncate
    f.truncate(10)
os.unlink(os.path.join(data, "part0/f002.bin"))  # replace by a file of its own
with open(os.path.join(data, "part0/f002.bin"), "wb") as f:
    f.write(b"not the dataset's")
with open(os.path.join(data, "part1/extra.txt"), "w") as f:  # add a file
    f.write("left behind")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the case is a job running as root")
def test_a_job_writing_into_its_data_as_root_damages_nothing_a_later_job_is_given(
    tmp_path: Path,
) -> None:
    src = _dataset(tmp_path / "src")
    env = _env(tmp_path / "home")
    first = _mlstage("stage", str(src), "--json", env=env)
    assert first.returncode == 0, first.stderr
    staged = json.loads(first.stdout)
    expected = _tree(src)
    job = subprocess.run([sys.executable, "-c", JOB, staged["path"]], check=False)
    assert job.returncode == 0
    assert _tree(Path(staged["path"])) != expected  # the hard links were written through

    again = _mlstage("stage", str(src), "--json", env=env)
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["version"] == staged["version"] and result["repaired"] is True
    assert _tree(Path(result["path"])) == expected  # the bytes the version names
    assert _mlstage("cache", "verify", env=env).returncode == 0
    third = json.loads(_mlstage("stage", str(src), "--json", env=env).stdout)
    assert third["hit"] is True and third["repaired"] is False


def test_a_fresh_download_replaces_a_damaged_cached_object(
    tmp_path: Path, s3_endpoint: S3Endpoint, bucket: str
) -> None:
    """D1: the same content in a second dataset is fetched verified; the damaged object file
    (truncated behind the cache's back) is replaced, never linked into the new tree."""
    client = s3_endpoint.client()
    shared = os.urandom(20_000)
    for prefix in ("one", "two"):
        client.put_object(Bucket=bucket, Key=f"{prefix}/same.bin", Body=shared)
        client.put_object(Bucket=bucket, Key=f"{prefix}/own.bin", Body=prefix.encode() * 100)
    env = _env(tmp_path / "home", **s3_endpoint.env())
    first = _mlstage("stage", f"s3://{bucket}/one", "--json", env=env)
    assert first.returncode == 0, first.stderr
    digest = hashlib.sha256(shared).hexdigest()
    obj = tmp_path / "home" / "cache" / "objects" / digest[:2] / digest
    with open(obj, "r+b") as f:  # as root: the 0444 mode does not stop it
        f.truncate(100)
    second = _mlstage("stage", f"s3://{bucket}/two", "--json", env=env)
    assert second.returncode == 0, second.stderr
    tree = Path(json.loads(second.stdout)["path"])
    assert (tree / "same.bin").read_bytes() == shared
    assert obj.read_bytes() == shared
    again = json.loads(_mlstage("stage", f"s3://{bucket}/one", "--json", env=env).stdout)
    assert (Path(again["path"]) / "same.bin").read_bytes() == shared  # its tree was repaired
    verified = _mlstage("cache", "verify", "--json", env=env)
    assert verified.returncode == 0 and json.loads(verified.stdout)["problems"] == []


@pytest.mark.parametrize("link", [False, True], ids=["copies", "links"])
def test_stage_to_gives_exactly_the_manifest_whatever_the_tree_holds(
    tmp_path: Path, link: bool
) -> None:
    """D2: files removed from the cached tree and one swapped for a link to a host file: --to
    gets the manifest's files, verified, and never the host's."""
    src = _dataset(tmp_path / "src")
    env = _env(tmp_path / "home")
    staged = json.loads(_mlstage("stage", str(src), "--json", env=env).stdout)
    tree = Path(staged["path"])
    os.chmod(tree / "part0", 0o755)
    (tree / "part0" / "f000.bin").unlink()
    (tree / "part0" / "f002.bin").unlink()
    (tree / "part0" / "f002.bin").symlink_to("/etc/hostname")
    digest = hashlib.sha256((src / "part1" / "f001.bin").read_bytes()).hexdigest()
    with open(tmp_path / "home" / "cache" / "objects" / digest[:2] / digest, "r+b") as f:
        f.truncate(7)
    out = tmp_path / "out"
    res = _mlstage("stage", str(src), "--to", str(out), *(["--link"] if link else []), env=env)
    assert res.returncode == 0, res.stderr
    assert _tree(out) == _tree(src)


# -- the cache's own disk: full, read-only -------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for this test (unmounted after)."""
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"this machine cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """A file taking all of ``disk``'s free space but ``leave`` bytes."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    st = os.statvfs(disk)
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def _open_deleted_files(under: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:  # the listing's own descriptor, closed since
            continue
        if target.startswith(str(under)) and target.endswith("(deleted)"):
            found.append(target)
    return found


def test_a_full_disk_at_any_step_is_one_error_and_leaves_the_cache_consistent(
    small_disk: Path, tmp_path: Path
) -> None:
    """D3: the disk fills at every step in turn (the index, objects, the tree, the record, the
    seal): each staging either completes or fails with one CacheError line, and once space is
    freed the cache is consistent without --repair, and the next staging completes."""
    src = FolderSource(_dataset(tmp_path / "src", n=8))
    manifest = src.resolve()
    outcomes: set[str] = set()
    for leave in range(0, 512 * 1024, 16 * 1024):  # staging needs ~400 KB here (WAL included)
        cache_dir = small_disk / "cache"
        subprocess.run(["rm", "-rf", str(cache_dir)], check=True)
        filler = _fill(small_disk, leave)
        try:
            with LocalCache(cache_dir) as cache:
                cache.stage(src, manifest, workers=2)
            outcomes.add("staged")
        except CacheError as exc:
            assert "\n" not in str(exc) and "hint:" in str(exc), exc
            outcomes.add("full")
        assert not _open_deleted_files(small_disk), leave  # a failed cache keeps no file open
        filler.unlink()
        with LocalCache(cache_dir) as cache:
            cache.gc()
            report = cache.verify()
            assert report.problems == [], (leave, report.problems)
            on_disk = sum(len(files) for _d, _s, files in os.walk(cache_dir / "objects"))
            assert on_disk == cache.stats().objects, leave  # no unindexed object left behind
            assert _tree(cache.stage(src, manifest).path) == _tree(src.root)
    assert outcomes == {"staged", "full"}  # the sweep crossed from failing to staging


def test_a_full_disk_through_the_cli_is_one_line(small_disk: Path, tmp_path: Path) -> None:
    src = _dataset(tmp_path / "src", n=8)
    env = _env(tmp_path / "home", MLSTAGE_CACHE_DIR=str(small_disk / "cache"))
    assert _mlstage("cache", "stats", env=env).returncode == 0  # the index fits
    _fill(small_disk, 8 * 1024)
    line = _one_line_error(_mlstage("stage", str(src), env=env))
    assert "MLSTAGE_CACHE_LIMIT_BYTES" in line or "free space" in line


def test_a_read_only_cache_is_one_line_for_every_command(small_disk: Path, tmp_path: Path) -> None:
    """D4: the cache's disk remounted read-only: each command says so in one line."""
    src = _dataset(tmp_path / "src")
    env = _env(tmp_path / "home", MLSTAGE_CACHE_DIR=str(small_disk / "cache"))
    assert _mlstage("stage", str(src), env=env).returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    for args in (["stage", str(src)], ["cache", "stats"], ["cache", "verify"], ["cache", "gc"]):
        line = _one_line_error(_mlstage(*args, env=env))
        assert "writable" in line or "read-only" in line.lower(), (args, line)


def test_stage_at_a_version_this_node_holds_never_lists_the_source(tmp_path: Path) -> None:
    """`--at VERSION`: a hit by version costs no listing (the source may even be gone)."""
    src = _dataset(tmp_path / "src")
    expected = _tree(src)
    env = _env(tmp_path / "home")
    version = json.loads(_mlstage("stage", str(src), "--json", env=env).stdout)["version"]
    subprocess.run(["rm", "-rf", str(src)], check=True)  # listing it now would fail
    held = _mlstage(
        "stage", str(src), "--at", version[:16], "--to", str(tmp_path / "out"), "--json", env=env
    )
    assert held.returncode == 0, held.stderr
    assert json.loads(held.stdout)["hit"] is True and _tree(tmp_path / "out") == expected
    line = _one_line_error(_mlstage("stage", str(src), "--at", "0" * 16, env=env))
    assert "no such folder" in line  # not held: the source is listed, and is gone
    _dataset(src)
    line = _one_line_error(_mlstage("stage", str(src), "--at", "0" * 16, env=env))
    assert "is now at version" in line


OWNER_LIFECYCLE = """
import os, sys
from pathlib import Path
from mlstage.cache import LocalCache
from mlstage.sources.local import FolderSource
root = Path(sys.argv[1])
if os.geteuid() == 0:  # as root, only with the owner's rights: no DAC override
    assert "CapBnd:\\t" in open("/proc/self/status").read()
    with open("/tmp/.mlstage-probe-" + str(os.getpid()), "w"): pass
    os.chmod("/tmp/.mlstage-probe-" + str(os.getpid()), 0o444)
    try:
        open("/tmp/.mlstage-probe-" + str(os.getpid()), "a")
        raise SystemExit("still overriding file permissions")
    except PermissionError:
        os.unlink("/tmp/.mlstage-probe-" + str(os.getpid()))
src = root / "src"
(src / "a" / "b").mkdir(parents=True)
for i in range(5):
    (src / "a" / "b" / f"f{i}").write_text(str(i))
(src / "top").write_text("t")
source = FolderSource(src)
with LocalCache(root / "cache") as cache:
    staged = cache.stage(source, source.resolve())
    assert cache.drop(staged.fingerprint)  # a read-only tree moved aside and removed
    staged = cache.stage(source, source.resolve())
    sub = staged.path / "a"
    os.chmod(sub, 0o755)  # the owner may write into its data: detected and rebuilt
    (sub / "extra").write_text("junk")
    again = cache.stage(source, source.resolve())
    assert again.repaired and not (again.path / "a" / "extra").exists()
    os.chmod(again.path, 0o755)
    os.symlink("/etc/hostname", again.path / "link")  # verify --repair rebuilds the tree
    report = cache.verify(repair=True)
    assert [p.kind for p in report.problems] == ["foreign_link"] and not report.unrepaired
    assert not (again.path / "link").exists()
    assert cache.evict(target_bytes=0) == [staged.fingerprint]
    cache.gc()
    assert not any((root / "cache" / "datasets").iterdir())
print("ok")
"""


def test_an_unprivileged_owner_can_drop_evict_and_repair(tmp_path: Path) -> None:
    """The cache's trees are read-only (0o555 folders): moving one aside to remove or rebuild
    it needs the owner to make it writable first (root never noticed: it overrides modes)."""
    cmd = [sys.executable, "-c", OWNER_LIFECYCLE, str(tmp_path)]
    if os.geteuid() == 0:
        setpriv = "/usr/bin/setpriv"
        if not os.path.exists(setpriv):
            pytest.skip("running as root without setpriv to drop the override of file modes")
        cmd = [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", *cmd]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]
