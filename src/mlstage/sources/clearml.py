"""ClearML datasets, fetched concurrently and verified file by file.

Two ways in, one reader:

- ``clearml://<dataset_id>`` and ``clearml://<project>/<name>[@<version>]``: the ClearML SDK
  (``Dataset.get``, needs the ClearML API server) names the dataset, its file entries and where
  each zip chunk is stored.
- Storage only, no ClearML server: ``clearml+s3://bucket/path/<name>.<id>`` or
  ``clearml+file:///path/<name>.<id>``, the folder ClearML wrote under its output_uri
  (``<project>/.datasets/<name>/<name>.<id>``). ``artifacts/state/state.json`` lists the files
  (relative path, size, sha256, parent dataset id, chunk); ``artifacts/data``, ``data_001``, ...
  hold the zip chunks. Parent datasets are found by id among the sibling folders (and the
  folders of other dataset names in the same project).

Either way the chunks are fetched by the transfer engine (concurrently, ranged, resumable),
only members listed in state.json are extracted (never by their own names: no path in an
archive can escape), and every file is checked against its sha256 before it is handed out.
"""

from __future__ import annotations

import json
import re
import stat
import threading
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from mlstage.errors import (
    ConfigError,
    IntegrityError,
    MlstageError,
    ObjectNotFound,
    SourceError,
    UnsafePathError,
)
from mlstage.manifest import Entry, Manifest
from mlstage.paths import safe_relpath
from mlstage.retry import RetryPolicy
from mlstage.sources.base import RemoteObject
from mlstage.store import Bucket, StoreConfig

_CHUNK_NAME = re.compile(r"^data(_\d+)?$")
_BUF = 1024 * 1024
_SPLITTABLE = 1024 * 1024  # the smallest part size: smaller chunks are never read in parts


@dataclass(frozen=True)
class Chunk:
    """One zip artifact of one dataset version."""

    key: str  # where the store finds it
    size: int
    checksum: str | None = None
    etag: str | None = None


# -- stores: where chunks and state.json live ------------------------------------------------
class BlobStore(Protocol):
    uri: str

    def list(self, prefix: str) -> list[tuple[str, int, str | None]]:
        """(key, size, etag) of every object under ``prefix`` (recursive)."""
        ...

    def children(self, prefix: str) -> list[str]:
        """Immediate sub-folders of ``prefix`` (keys ending in '/')."""
        ...

    def get(self, key: str) -> bytes: ...

    def read(
        self, key: str, size: int, etag: str | None, start: int, end: int
    ) -> Iterator[bytes]: ...


class S3Store:
    """Keys in one bucket, through ``mlstage.store`` like ``s3://`` sources (one ``Bucket``)."""

    def __init__(self, bucket: str | Bucket, *, config: StoreConfig | None = None) -> None:
        self.bucket = bucket if isinstance(bucket, Bucket) else Bucket(bucket, config)
        self.uri = self.bucket.uri()

    def list(self, prefix: str) -> list[tuple[str, int, str | None]]:
        return [(o.key, o.size, o.etag or None) for page in self.bucket.pages(prefix) for o in page]

    def children(self, prefix: str) -> list[str]:
        return self.bucket.children(prefix)[1]

    def get(self, key: str) -> bytes:
        return self.bucket.get(key)

    def read(self, key: str, size: int, etag: str | None, start: int, end: int) -> Iterator[bytes]:
        return self.bucket.read(key, start, end, size=size, etag=etag)

    def honours_ranges(self, key: str, etag: str | None) -> bool:
        """Whether the endpoint answers ranged GETs with 206 (``mlstage.store.ranges``)."""
        return self.bucket.honours_ranges(key, etag)


class FolderStore:
    """Files below a local or NFS folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = f"file://{root.as_posix().rstrip('/')}/"

    def _path(self, key: str) -> Path:
        return self.root / safe_relpath(key, origin=self.uri)

    def list(self, prefix: str) -> list[tuple[str, int, str | None]]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.is_dir():
            return []
        out = []
        for p in sorted(base.rglob("*")):
            if p.is_symlink():
                raise UnsafePathError(f"{self.uri}: refusing link {p}", hint="replace it by a file")
            if p.is_file():
                st = p.stat()
                out.append(
                    (
                        p.relative_to(self.root).as_posix(),
                        st.st_size,
                        f"{st.st_size}-{st.st_mtime_ns}",
                    )
                )
        return out

    def children(self, prefix: str) -> list[str]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.is_dir():
            return []
        return [
            p.relative_to(self.root).as_posix() + "/"
            for p in sorted(base.iterdir())
            if p.is_dir() and not p.is_symlink()
        ]

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"{self.uri}{key}: no such file") from exc

    def read(self, key: str, size: int, etag: str | None, start: int, end: int) -> Iterator[bytes]:
        try:
            with open(self._path(key), "rb") as f:
                f.seek(start)
                remaining = end - start
                while remaining > 0:
                    chunk = f.read(min(_BUF, remaining))
                    if not chunk:
                        return
                    remaining -= len(chunk)
                    yield chunk
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"{self.uri}{key}: disappeared", hint="re-resolve") from exc


# -- the dataset's description: state.json plus where its chunks are ------------------------
@dataclass(frozen=True)
class DatasetLayout:
    """What a ClearML dataset version holds and where its chunks are."""

    dataset_id: str
    files: list[dict[str, Any]]
    links: list[dict[str, Any]]
    chunks: dict[tuple[str, str], Chunk]


def _chunks_in(store: BlobStore, folder: str) -> dict[str, Chunk]:
    """Zip chunks of the dataset stored in ``folder`` (ending in '/'), by artifact name."""
    from mlstage.sources.s3 import etag_md5

    found: dict[str, Chunk] = {}
    for key, size, etag in store.list(folder + "artifacts/"):
        parts = key[len(folder) :].split("/")
        if len(parts) != 3 or not _CHUNK_NAME.match(parts[1]) or not parts[2].endswith(".zip"):
            continue
        if parts[1] in found:
            raise SourceError(
                f"{store.uri}{folder}: two zips for chunk {parts[1]}",
                hint="the dataset folder holds leftovers of an interrupted upload",
            )
        found[parts[1]] = Chunk(key, size, etag_md5(etag), etag)
    return found


def load_storage_layout(store: BlobStore, folder: str) -> DatasetLayout:
    """Read a dataset and the chunks of every parent it uses from storage alone."""
    folder = folder.rstrip("/") + "/"
    name = folder.rstrip("/").rsplit("/", 1)[-1]
    if "." not in name:
        raise ConfigError(
            f"{store.uri}{folder}: not a ClearML dataset folder",
            hint="point at the folder named <dataset_name>.<dataset_id>",
        )
    dataset_id = name.rsplit(".", 1)[1]
    try:
        state = json.loads(store.get(folder + "artifacts/state/state.json"))
    except ObjectNotFound as exc:
        raise ObjectNotFound(
            f"{store.uri}{folder}: no artifacts/state/state.json",
            hint="check the path; it must be the folder ClearML wrote for one dataset version",
        ) from exc
    except json.JSONDecodeError as exc:
        raise SourceError(f"{store.uri}{folder}: state.json is not valid JSON") from exc
    if state.get("id") not in (None, dataset_id):
        raise SourceError(
            f"{store.uri}{folder}: state.json belongs to dataset {state.get('id')}",
            hint="the folder name and its content disagree",
        )
    files = state.get("dataset_file_entries", [])
    chunks: dict[tuple[str, str], Chunk] = {
        (dataset_id, a): c for a, c in _chunks_in(store, folder).items()
    }
    needed = {f.get("parent_dataset_id") or dataset_id for f in files} - {dataset_id}
    if needed:
        parent_dir = folder.rstrip("/").rsplit("/", 1)[0] + "/" if "/" in folder.rstrip("/") else ""
        candidates = store.children(parent_dir)
        if len(needed) > sum(1 for c in candidates if c.rstrip("/").rsplit(".", 1)[-1] in needed):
            grand = (
                parent_dir.rstrip("/").rsplit("/", 1)[0] + "/"
                if "/" in parent_dir.rstrip("/")
                else ""
            )
            for sibling in store.children(grand):
                if sibling != parent_dir:
                    candidates += store.children(sibling)
        for pid in sorted(needed):
            where = [c for c in candidates if c.rstrip("/").rsplit(".", 1)[-1] == pid]
            if not where:
                raise ObjectNotFound(
                    f"{store.uri}{folder}: parent dataset {pid} is not stored next to it",
                    hint="storage-only reads find parents among sibling folders; "
                    "use clearml://<id> with a ClearML server otherwise",
                )
            chunks.update({(pid, a): c for a, c in _chunks_in(store, where[0]).items()})
    return DatasetLayout(dataset_id, files, state.get("dataset_link_entries", []), chunks)


# -- the source ------------------------------------------------------------------------------
class ClearMLSource:
    """A ClearML dataset version: its files come out of zip chunks, checked by sha256."""

    supports_ranges = True

    def __init__(self, uri: str, store: BlobStore, layout_loader: Any) -> None:
        self.uri = uri
        self.store = store
        self._load = layout_loader
        self._layout: DatasetLayout | None = None
        self._lock = threading.Lock()

    @property
    def layout(self) -> DatasetLayout:
        with self._lock:
            if self._layout is None:
                self._layout = RetryPolicy().call(self._load)
            return self._layout

    def resolve(self) -> Manifest:
        """state.json (one GET) and the chunk listing; no chunk is read."""
        with self._lock:
            self._layout = None
        layout = self.layout
        if layout.links:
            raise SourceError(
                f"{self.uri}: {len(layout.links)} external link entries are not supported",
                hint="stage the linked files from their own URI",
            )
        entries = []
        for f in layout.files:
            rel = f.get("relative_path") or ""
            pid = f.get("parent_dataset_id") or layout.dataset_id
            art = f.get("artifact_name") or ""
            if not f.get("hash") or f.get("size") is None:
                raise SourceError(f"{self.uri}: state.json entry {rel!r} lacks a hash or size")
            if not re.fullmatch("[0-9a-f]{64}", str(f["hash"])):
                raise SourceError(
                    f"{self.uri}: state.json entry {rel!r} has a hash that is no sha256 "
                    f"hex digest: {str(f['hash'])[:80]!r}",
                    hint="the dataset's state.json is corrupt or was not written by ClearML",
                )
            if (pid, art) not in layout.chunks:
                raise ObjectNotFound(
                    f"{self.uri}: chunk {art!r} of dataset {pid} (holding {rel!r}) is missing",
                    hint="the dataset upload was incomplete or the storage was pruned",
                )
            entries.append(
                Entry(
                    path=safe_relpath(rel, origin=self.uri),
                    size=int(f["size"]),
                    checksum=f"sha256:{f['hash']}",
                    locator=f"{pid}/{art}/{rel}",
                )
            )
        if not entries:
            raise ObjectNotFound(
                f"{self.uri}: the dataset has no files", hint="check the dataset id"
            )
        return Manifest(source=self.uri, entries=entries)

    def objects(self, entries: Sequence[Entry]) -> list[RemoteObject]:
        """One download per zip chunk that holds any of ``entries``."""
        groups: dict[tuple[str, str], list[Entry]] = {}
        for e in entries:
            pid, art, _rel = e.locator.split("/", 2)
            groups.setdefault((pid, art), []).append(e)
        out = []
        for (pid, art), members in groups.items():
            chunk = self.layout.chunks.get((pid, art))
            if chunk is None:
                raise ObjectNotFound(f"{self.uri}: chunk {art!r} of dataset {pid} is missing")
            out.append(
                RemoteObject(
                    chunk.key,
                    chunk.size,
                    chunk.checksum,
                    tuple(members),
                    archive=True,
                    etag=chunk.etag,
                )
            )
        honours = getattr(self.store, "honours_ranges", None)  # S3 stores: ask the endpoint once
        big = next((o for o in out if o.size > _SPLITTABLE), None)
        if honours is not None and big is not None:
            self.supports_ranges = honours(big.key, big.etag)
        return out

    def read(self, obj: RemoteObject, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        end = obj.size if end is None else end
        if end <= start:
            return iter(())
        return self.store.read(obj.key, obj.size, obj.etag, start, end)

    def unpack(self, obj: RemoteObject, path: Path, workdir: Path) -> list[tuple[Entry, Path]]:
        """Extract the listed members (by state.json, never by archive names) into ``workdir``."""
        workdir.mkdir(parents=True, exist_ok=True)
        out: list[tuple[Entry, Path]] = []
        try:
            with zipfile.ZipFile(path) as zf:
                for i, entry in enumerate(obj.entries):
                    member = entry.locator.split("/", 2)[2]
                    try:
                        info = zf.getinfo(member)
                    except KeyError as exc:
                        raise IntegrityError(
                            f"{self.uri}: chunk {obj.key} lacks {member!r}",
                            hint="the chunk does not match state.json",
                        ) from exc
                    mode = info.external_attr >> 16
                    if info.is_dir() or stat.S_ISLNK(mode):
                        raise UnsafePathError(
                            f"{self.uri}: chunk {obj.key}: {member!r} is not a regular file",
                            hint="links and folders in archives are refused",
                        )
                    if info.file_size != entry.size:
                        raise IntegrityError(
                            f"{self.uri}: {member!r} is {info.file_size} bytes in the chunk, "
                            f"state.json says {entry.size}"
                        )
                    target = workdir / f"{i:06d}"
                    with zf.open(info) as src, open(target, "wb") as dst:
                        left = entry.size
                        while chunk := src.read(min(_BUF, left + 1)):
                            left -= len(chunk)
                            if left < 0:
                                raise IntegrityError(f"{self.uri}: {member!r} is too long")
                            dst.write(chunk)
                    out.append((entry, target))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
            if isinstance(exc, MlstageError):
                raise
            raise IntegrityError(
                f"{self.uri}: chunk {obj.key} is not a readable zip ({exc})",
                hint="the stored chunk is damaged",
            ) from exc
        return out


# -- URIs ------------------------------------------------------------------------------------
def _storage_source(uri: str) -> ClearMLSource:
    parts = urlsplit(uri)
    store: BlobStore
    if parts.scheme == "clearml+s3":
        if not parts.netloc:
            raise ConfigError(
                f"{uri!r}: no bucket", hint="write clearml+s3://bucket/path/<name>.<id>"
            )
        store = S3Store(parts.netloc)
        folder = unquote(parts.path).strip("/")
    else:
        root = Path(unquote(parts.path))
        if not root.is_absolute():
            raise ConfigError(
                f"{uri!r}: not an absolute path", hint="write clearml+file:///abs/path"
            )
        if not root.is_dir():
            raise ObjectNotFound(f"{uri}: no such folder", hint="check the path on this node")
        # rooted at / so that parents stored under another dataset name can be found too
        store = FolderStore(Path(root.anchor))
        folder = root.as_posix().lstrip("/")
    return ClearMLSource(uri, store, lambda: load_storage_layout(store, folder))


def parse_clearml_uri(uri: str) -> dict[str, str | None]:
    """``clearml://<id>`` or ``clearml://<project>/<name>[@<version>]`` -> Dataset.get arguments."""
    rest = unquote(uri[len("clearml://") :]).strip("/")
    if not rest:
        raise ConfigError(
            f"{uri!r}: no dataset", hint="write clearml://<id> or clearml://<project>/<name>"
        )
    if "/" not in rest:
        return {"dataset_id": rest}
    project, name = rest.rsplit("/", 1)
    version = None
    if "@" in name:
        name, version = name.split("@", 1)
    return {"dataset_project": project, "dataset_name": name, "dataset_version": version}


def s3_endpoint_for(netloc: str) -> str:
    """The endpoint URL for ``host:port`` of an ``s3://host:port/bucket/key`` chunk URL.

    AWS_ENDPOINT_URL is used when it names that host and port (it says http or https);
    otherwise https on port 443 and http elsewhere (MinIO, Ceph on a LAN).
    """
    import os

    env = os.environ.get("AWS_ENDPOINT_URL", "")
    if env and urlsplit(env).netloc == netloc:
        return env.rstrip("/")
    return f"{'https' if netloc.endswith(':443') else 'http'}://{netloc}"


def _store_for_url(url: str, stores: dict[str, Any] | None = None) -> tuple[BlobStore, str]:
    """A store and key for a chunk URL ClearML recorded (s3://, file://, http(s)://).

    ``stores`` keeps one store (and so one client) per endpoint and bucket across chunks.
    """
    stores = {} if stores is None else stores
    parts = urlsplit(url)
    if parts.scheme == "s3":
        path = parts.path.lstrip("/")
        if ":" in parts.netloc:  # s3://host:port/bucket/key (a non-AWS endpoint)
            bucket, _, key = path.partition("/")
            endpoint = s3_endpoint_for(parts.netloc)
        else:
            bucket, key, endpoint = parts.netloc, path, ""
        store = stores.get(f"s3 {endpoint} {bucket}")
        if store is None:
            config = StoreConfig.from_env(endpoint=endpoint) if endpoint else None
            store = stores[f"s3 {endpoint} {bucket}"] = S3Store(bucket, config=config)
        return store, key
    if parts.scheme in ("file", ""):
        p = Path(unquote(parts.path))
        return FolderStore(p.parent), p.name
    if parts.scheme in ("http", "https"):
        store = stores.get("http")
        if store is None:
            store = stores["http"] = _UrlStore()
        return store, url
    raise SourceError(f"chunk at {url}: storage scheme {parts.scheme!r} is not supported")


class _UrlStore:
    """Chunks at http(s) URLs, read through one shared HTTP client."""

    uri = ""

    def __init__(self) -> None:
        from mlstage.sources.http import HttpSource

        self._http: HttpSource | None = None
        self._lock = threading.Lock()
        self._factory = HttpSource

    def read(self, key: str, size: int, etag: str | None, start: int, end: int) -> Iterator[bytes]:
        with self._lock:
            if self._http is None:
                self._http = self._factory(key)
            http = self._http
        return http.read(RemoteObject(key, size, None, (), etag=etag), start, end)

    def close(self) -> None:
        """Close the HTTP client, if one was made."""
        with self._lock:
            if self._http is not None and self._http._client is not None:
                self._http._client.close()
            self._http = None


class _RoutingStore:
    """Chunks of an SDK-resolved dataset may sit in different stores: route by key."""

    uri = ""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[Any, str]] = {}

    def read(self, key: str, size: int, etag: str | None, start: int, end: int) -> Iterator[bytes]:
        store, real = self.routes[key]
        return store.read(real, size, etag, start, end)


def _sdk_source(uri: str) -> ClearMLSource:
    args = parse_clearml_uri(uri)
    router = _RoutingStore()
    stores: dict[str, Any] = {}

    def load() -> DatasetLayout:
        try:
            from clearml import Dataset

            ds = Dataset.get(**{k: v for k, v in args.items() if v is not None})
        except MlstageError:
            raise
        except Exception as exc:
            said = str(exc).strip()
            if "not configured" in said:  # the SDK's multi-line banner: no server to ask
                raise ConfigError(
                    f"{uri}: ClearML is not configured on this machine",
                    hint="set CLEARML_API_HOST and CLEARML_API_ACCESS_KEY/SECRET_KEY (or run "
                    "clearml-init, or pass an mlstage-clearml-credentials block); "
                    "clearml+s3:// and clearml+file:// URIs need no server",
                ) from exc
            raise ObjectNotFound(
                f"{uri}: ClearML could not find the dataset "
                f"({said.splitlines()[0] if said else type(exc).__name__})",
                hint="check the id or project/name, and CLEARML_API_HOST and credentials",
            ) from exc
        files = [f.as_dict() for f in ds.file_entries]
        links = [link.as_dict() for link in ds.link_entries]
        chunks: dict[tuple[str, str], Chunk] = {}
        for pid in {f.get("parent_dataset_id") or ds.id for f in files}:
            task = (ds if pid == ds.id else Dataset.get(dataset_id=pid))._task
            for name, art in task.artifacts.items():
                if not _CHUNK_NAME.match(name):
                    continue
                store, key = _store_for_url(art.url, stores)
                router.routes[art.url] = (store, key)
                sha = f"sha256:{art.hash}" if getattr(art, "hash", None) else None
                chunks[(pid, name)] = Chunk(art.url, int(art.size), sha)
        return DatasetLayout(ds.id, files, links, chunks)

    return ClearMLSource(uri, router, load)  # type: ignore[arg-type]


def from_uri(uri: str) -> ClearMLSource:
    """clearml://... through the SDK; clearml+s3:// and clearml+file:// from storage alone."""
    if uri.startswith("clearml://"):
        return _sdk_source(uri)
    if uri.startswith(("clearml+s3://", "clearml+file://")):
        return _storage_source(uri)
    raise ConfigError(
        f"not a ClearML URI: {uri!r}",
        hint="clearml://<id>, clearml://<project>/<name>[@<version>], clearml+s3://..., clearml+file:///...",
    )
