"""The shared tier: where preprocessed artifacts live for every node and job to stage.

An artifact is content-addressed (its id is the hash of its inputs, see recipes) and written
manifest-last, so a reader either finds ``manifest.json`` and a complete artifact, or nothing::

    <root>/artifacts/<artifact_id>/data/...       the files (S3: data-<nonce>/, see below)
    <root>/artifacts/<artifact_id>/artifact.json  provenance: source version, recipe, params
    <root>/artifacts/<artifact_id>/manifest.json  written last: the files with sha256

A folder (NFS, a PVC) is the default, published by one atomic rename; ``s3://bucket/prefix``
for teams, where each publisher uploads under its own ``data-<nonce>/`` and the manifest (which
names that prefix) is written only if absent, so nodes publishing one artifact at once from a
recipe that is not deterministic never mix their files.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from mlstage.errors import (
    ConfigError,
    ObjectNotFound,
    SharedTierError,
    SourceError,
    TransientError,
    UnsafePathError,
)
from mlstage.folders import walk
from mlstage.manifest import Entry, Manifest, ManifestBuilder
from mlstage.retry import gave_up
from mlstage.sources import scheme_of
from mlstage.sources.base import Source
from mlstage.sources.local import FolderSource
from mlstage.store import Bucket, StoreConfig
from mlstage.transfer import file_sha256


class Artifact:
    """A published artifact: its id, where it is, its files, and where it came from.

    ``manifest`` may be given as a function that reads it: it is read on first use, so a
    node that already holds the artifact (found by id in its cache) never reads the listing
    of a million-file artifact.
    """

    def __init__(
        self,
        artifact_id: str,
        uri: str,
        manifest: Manifest | Callable[[], Manifest],
        info: dict[str, Any] | None = None,
    ) -> None:
        self.artifact_id = artifact_id
        self.uri = uri
        self.info = info or {}
        self._manifest = manifest if isinstance(manifest, Manifest) else None
        self._read = None if isinstance(manifest, Manifest) else manifest
        self._lock = threading.Lock()

    @property
    def manifest(self) -> Manifest:
        with self._lock:
            if self._manifest is None:
                assert self._read is not None
                self._manifest = self._read()
            return self._manifest

    @property
    def bytes(self) -> int:
        return self.manifest.total_bytes

    def __reduce__(self) -> tuple[object, ...]:
        return (Artifact, (self.artifact_id, self.uri, self.manifest, self.info))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Artifact):
            return NotImplemented
        return (self.artifact_id, self.uri, self.info) == (
            other.artifact_id,
            other.uri,
            other.info,
        ) and self.manifest == other.manifest

    def __hash__(self) -> int:
        return hash((self.artifact_id, self.uri))

    def __repr__(self) -> str:
        return f"Artifact({self.artifact_id}, {self.uri})"


_ARTIFACT_ID = re.compile(r"[0-9a-f]{32}")


def check_artifact_id(artifact_id: str) -> str:
    """``artifact_id`` if it is a content address (32 lowercase hex), else ConfigError.

    Ids arrive as flow parameters; anything else could name a path outside the shared tier.
    """
    if not isinstance(artifact_id, str) or not _ARTIFACT_ID.fullmatch(artifact_id):
        raise ConfigError(
            f"invalid artifact id {artifact_id!r}",
            hint="an artifact id is 32 lowercase hex characters, as preprocess prints it",
        )
    return artifact_id


def regular_files(root: Path) -> Iterator[tuple[str, str, os.stat_result]]:
    """``(path, relative path, lstat)`` of every file under ``root`` in manifest order, one
    folder's listing held at a time; refuses links and special files (UnsafePathError).

    Never follows a link, so a recipe cannot publish what a link points to.
    """
    for path, rel, st in walk(str(root)):
        if stat.S_ISREG(st.st_mode):
            yield path, rel, st
        elif not stat.S_ISDIR(st.st_mode):
            kind = "a link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise UnsafePathError(
                f"refusing to publish {path}: it is {kind}",
                hint="a recipe's output must hold only regular files and folders",
            )


def refuse_links(root: Path) -> None:
    """Raise UnsafePathError when ``root`` holds a link or a special file."""
    for _ in regular_files(root):
        pass


def manifest_of_dir(root: Path, *, source: str) -> Manifest:
    """A manifest of every file under ``root`` with its sha256 (locators relative to root).

    Links and special files are refused (UnsafePathError), see ``regular_files``.
    """
    builder = ManifestBuilder(source)  # columns as it goes, not an Entry per file held
    for path, rel, st in regular_files(root):
        builder.add(
            Entry(
                path=rel,
                size=st.st_size,
                checksum=f"sha256:{file_sha256(Path(path))}",
                locator=rel,
            )
        )
    return builder.build()


class SharedTier(Protocol):
    uri: str

    def get(self, artifact_id: str) -> Artifact | None:
        """The artifact if it is completely published, else None."""
        ...

    def publish(self, artifact_id: str, data_dir: Path, info: dict[str, Any]) -> Artifact:
        """Publish ``data_dir`` under ``artifact_id``; idempotent, manifest last."""
        ...

    def source(self, artifact: Artifact) -> Source:
        """A Source that reads the artifact's files."""
        ...


class FolderSharedTier:
    """The shared tier on a file system every node mounts."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()
        self.uri = str(self.root)

    def _dir(self, artifact_id: str) -> Path:
        return self.root / "artifacts" / check_artifact_id(artifact_id)

    def get(self, artifact_id: str) -> Artifact | None:
        """The artifact if its manifest is there (written last); the manifest is read when
        first used (``Artifact``)."""
        d = self._dir(artifact_id)
        if not (d / "manifest.json").is_file():
            return None
        try:
            info = json.loads((d / "artifact.json").read_text())
        except FileNotFoundError:
            return None
        return Artifact(artifact_id, str(d), lambda: Manifest.load(d / "manifest.json"), info)

    def publish(self, artifact_id: str, data_dir: Path, info: dict[str, Any]) -> Artifact:
        existing = self.get(artifact_id)
        if existing is not None:
            return existing
        final = self._dir(artifact_id)
        refuse_links(data_dir)  # before anything is copied
        tmp = final.with_name(f".tmp-{artifact_id}-{os.getpid()}-{os.urandom(4).hex()}")
        try:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(data_dir, tmp / "data", symlinks=True)
            manifest = manifest_of_dir(tmp / "data", source=str(final / "data"))
            (tmp / "artifact.json").write_text(json.dumps(info, indent=2, sort_keys=True))
            manifest.save(tmp / "manifest.json")  # a line at a time
            try:
                os.rename(tmp, final)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                published = self.get(artifact_id)
                if published is not None:  # another node published it first: theirs stands
                    return published
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                raise SharedTierError(
                    f"cannot publish {artifact_id}: {final} is in the way, a folder without "
                    "a manifest.json (not written by mlstage, or copied in part)",
                    hint="remove that folder; mlstage publishes into a temporary one and "
                    "renames it",
                ) from exc
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SharedTierError(
                f"cannot publish {artifact_id} to {self.root}: {exc}",
                hint="check the shared folder is mounted and writable",
            ) from exc
        published = self.get(artifact_id)
        if published is None:
            raise SharedTierError(
                f"published {artifact_id} to {self.root} but cannot read it back",
                hint="check the shared folder is mounted and writable",
            )
        return published

    def source(self, artifact: Artifact) -> Source:
        return FolderSource(self._dir(artifact.artifact_id) / "data", uri=f"{artifact.uri}/data")


class S3SharedTier:
    """The shared tier under ``s3://bucket/prefix``, read and written through one ``Bucket``."""

    def __init__(
        self, uri: str, *, store: Bucket | None = None, config: StoreConfig | None = None
    ) -> None:
        """``store``: the bucket to use (its configuration and connections); else one reached
        as ``config`` says, by default the AWS environment."""
        from mlstage.sources.s3 import parse_s3_uri

        self.bucket, prefix = parse_s3_uri(uri)
        self.prefix = prefix.rstrip("/") + "/" if prefix else ""
        self.uri = f"s3://{self.bucket}/{self.prefix}"
        if store is not None and store.name != self.bucket:
            raise ConfigError(
                f"{self.uri}: the store given is for bucket {store.name!r}",
                hint="give the shared tier a Bucket of its own bucket",
            )
        self.store = store or Bucket(self.bucket, config)

    def _key(self, artifact_id: str, name: str) -> str:
        return f"{self.prefix}artifacts/{check_artifact_id(artifact_id)}/{name}"

    def get(self, artifact_id: str) -> Artifact | None:
        """The artifact if its manifest is published, else None; errors other than "not
        there" are SharedTierErrors. The manifest is read when first used (``Artifact``), a
        line at a time: a node that holds the artifact never reads it."""
        check_artifact_id(artifact_id)
        manifest_key = self._key(artifact_id, "manifest.json")
        with self._reading(artifact_id):
            listed = self.store.head(manifest_key)
            if listed is None:
                return None
            try:
                info = json.loads(self.store.get(self._key(artifact_id, "artifact.json")))
            except ObjectNotFound:
                return None

        def read_once() -> Manifest:
            chunks = self.store.read(
                manifest_key, 0, listed.size, size=listed.size, etag=listed.etag or None
            )
            return Manifest.read(_lines(chunks), origin=self.store.uri(manifest_key))[0]

        def read_manifest() -> Manifest:
            with self._reading(artifact_id):
                return self.store.retry.call(read_once)

        return Artifact(
            artifact_id,
            f"s3://{self.bucket}/{self._key(artifact_id, '')}".rstrip("/"),
            read_manifest,
            info,
        )

    @contextmanager
    def _reading(self, artifact_id: str) -> Iterator[None]:
        """The store's errors while reading an artifact, as SharedTierErrors."""
        try:
            yield
        except TransientError as exc:
            raise SharedTierError(
                f"cannot read artifact {artifact_id} from {self.uri}: {gave_up(exc, '')}",
                hint="the shared tier's endpoint keeps failing; retry later",
            ) from exc
        except SourceError as exc:
            raise SharedTierError(str(exc), hint=exc.hint) from exc

    def publish(self, artifact_id: str, data_dir: Path, info: dict[str, Any]) -> Artifact:
        """Upload under a prefix of this publisher's own, then write the manifest only if no
        other publisher's is there (a conditional PUT): publishers racing on one artifact never
        mix their files, and the first complete manifest wins; a loser removes its prefix and
        returns the winner's artifact. A store without conditional writes (rclone's ignores
        ``If-None-Match``) lets the last manifest win, still naming a prefix whose files are
        all its own."""
        existing = self.get(artifact_id)
        if existing is not None:
            return existing
        refuse_links(data_dir)  # before anything is uploaded
        data = self._key(artifact_id, f"data-{os.urandom(6).hex()}")
        manifest = manifest_of_dir(data_dir, source=f"s3://{self.bucket}/{data}")

        def put(e: Entry) -> None:
            self.store.put(f"{data}/{e.path}", data_dir / e.path)

        failed: Exception | None = None
        try:
            with ThreadPoolExecutor(max_workers=16) as pool:
                list(pool.map(put, manifest.entries))
            provenance = json.dumps(info, indent=2, sort_keys=True).encode()
            self.store.put(self._key(artifact_id, "artifact.json"), provenance, create_only=True)
            self.store.put(
                self._key(artifact_id, "manifest.json"),
                manifest.to_json().encode(),
                create_only=True,  # there already: the read-back below decides whose it is
            )
        except Exception as exc:  # noqa: BLE001 - what the bucket holds decides, below
            failed = exc
        published = self._forget_unless_named(artifact_id, data)
        if published is not None:  # ours, or another node's: published either way
            return published
        if failed is not None:
            hint = getattr(failed, "hint", None)
            raise SharedTierError(
                f"cannot publish {artifact_id} to {self.uri}: {failed}",
                hint=hint if isinstance(hint, str) else None,
            ) from failed
        raise SharedTierError(
            f"published {artifact_id} to {self.uri} but cannot read it back",
            hint="check the bucket's permissions (GetObject) and that nothing removes it",
        )

    def _forget_unless_named(self, artifact_id: str, data: str) -> Artifact | None:
        """The artifact as published; our ``data`` prefix is removed unless its manifest names
        it. Decided from what the bucket holds, not from the PUT's answer: a PUT that landed
        and was retried answers PreconditionFailed."""
        try:
            published = self.get(artifact_id)
        except Exception:  # noqa: BLE001 - cannot tell: keep the files (garbage at worst)
            return None
        if published is None or published.manifest.source != f"s3://{self.bucket}/{data}":
            self._remove_prefix(f"{data}/")
        return published

    def _remove_prefix(self, prefix: str) -> None:
        """Best effort: delete every object under ``prefix`` (a publish that lost or failed)."""
        try:
            for page in self.store.pages(prefix):
                self.store.delete([o.key for o in page])
        except Exception:  # noqa: BLE001 - left behind, it is garbage no manifest names
            pass

    def source(self, artifact: Artifact) -> Source:
        """The artifact's files, under the prefix its manifest names (``data/`` for artifacts
        published before per-publisher prefixes), which must lie inside the artifact."""
        from mlstage.sources.s3 import S3Source, parse_s3_uri

        bucket, key = parse_s3_uri(artifact.manifest.source)
        inside = self._key(artifact.artifact_id, "")
        rest = key[len(inside) :] if key.startswith(inside) else ""
        if bucket != self.bucket or not re.fullmatch(r"data(-[0-9a-f]+)?/?", rest):
            raise SharedTierError(
                f"artifact {artifact.artifact_id}'s manifest names {artifact.manifest.source}, "
                f"outside the artifact at s3://{self.bucket}/{inside}",
                hint="the manifest was not written by mlstage; remove the artifact to rebuild it",
            )
        return S3Source(self.store, key.rstrip("/") + "/")


def _lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """The text lines of a byte stream, decoded one at a time (never the whole text)."""
    rest = b""
    for chunk in chunks:
        rest += chunk
        *lines, rest = rest.split(b"\n")
        for line in lines:
            yield line.decode()
    if rest:
        yield rest.decode()


def open_shared(location: str, *, config: StoreConfig | None = None) -> SharedTier:
    """The shared tier at a folder path or ``s3://bucket/prefix`` (reached as ``config``
    says, by default the AWS environment)."""
    if scheme_of(location) == "s3":
        return S3SharedTier(location, config=config)
    if scheme_of(location) in ("", "file"):
        return FolderSharedTier(location.removeprefix("file://"))
    raise SharedTierError(
        f"unsupported shared tier {location!r}", hint="use a folder path or s3://bucket/prefix"
    )
