"""Sources without network: URIs, brace expansion, folders, ClearML chunk unpacking."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

import pytest

from mlstage.errors import ConfigError, IntegrityError, SourceError, UnsafePathError
from mlstage.manifest import Entry
from mlstage.sources import open_source, scheme_of
from mlstage.sources.base import RemoteObject
from mlstage.sources.clearml import (
    ClearMLSource,
    FolderStore,
    _store_for_url,
    parse_clearml_uri,
)
from mlstage.sources.http import HttpSource, _relative_paths, expand_braces
from mlstage.sources.local import FolderSource


def test_brace_expansion_ranges_lists_and_padding() -> None:
    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("s-{8..10}.tar") == ["s-8.tar", "s-9.tar", "s-10.tar"]
    assert expand_braces("{train,val}/s-{0..1}.tar") == [
        "train/s-0.tar",
        "train/s-1.tar",
        "val/s-0.tar",
        "val/s-1.tar",
    ]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(ConfigError):
        expand_braces("s-{abc}.tar")


def test_http_paths_are_relative_to_the_common_folder() -> None:
    urls = expand_braces("https://h/d/{train,val}/s-{0..1}.tar")
    assert _relative_paths(urls, "x") == [
        "train/s-0.tar",
        "train/s-1.tar",
        "val/s-0.tar",
        "val/s-1.tar",
    ]
    assert _relative_paths(["https://h/a/b/one.tar"], "x") == ["one.tar"]


def test_uri_schemes_and_refusals() -> None:
    assert scheme_of("/data/x") == "" and scheme_of("s3://b/p") == "s3"
    assert scheme_of("clearml+s3://b/p") == "clearml+s3"
    with pytest.raises(ConfigError, match="no source handles"):
        open_source("gopher://x/y")
    with pytest.raises(ConfigError, match="credentials"):
        open_source("s3://key:secret@bucket/p")
    with pytest.raises(ConfigError, match="credentials"):
        open_source("https://user:pw@host/s-{0..1}.tar")
    signed = "https://b.s3.amazonaws.com/k.tar?X-Amz-Credential=AKIA1&X-Amz-Signature=SIG1&v=1"
    with pytest.raises(ConfigError, match="carries credentials") as info:
        open_source(signed)  # kept, it would reach the cache index, manifests and logs
    assert "SIG1" not in str(info.value) and "AKIA1" not in str(info.value)
    with pytest.raises(ConfigError, match="carries credentials"):
        open_source("https://h/p;token=abc/s-{0..1}.tar?x=1")
    assert open_source("https://host/s-{0..1}.tar?v=1").uri.endswith("?v=1")
    with pytest.raises(ConfigError, match="'bad bucket' is not a bucket name"):
        open_source("s3://bad bucket/x")
    for folder in ("http://127.0.0.1:8000/", "https://host", "https://host/shards/"):
        with pytest.raises(ConfigError, match="names no file"):
            open_source(folder)


@pytest.mark.parametrize("uri", ["", "  ", "file://"])
def test_an_empty_uri_is_refused_rather_than_read_as_this_folder(uri: str) -> None:
    with pytest.raises(ConfigError, match="empty dataset URI"):
        open_source(uri)


def test_every_spelling_of_a_folder_is_one_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.bin").write_bytes(b"a")
    monkeypatch.chdir(tmp_path)
    spellings = [
        "data",
        "./data/",
        str(tmp_path / "data"),
        f"file://{tmp_path}/data/",
        str(tmp_path / "data" / ".." / "data"),
    ]
    versions = {open_source(u).resolve().fingerprint for u in spellings}
    assert len(versions) == 1
    assert {open_source(u).uri for u in spellings} == {str(tmp_path / "data")}


def test_a_file_or_an_empty_folder_is_no_dataset(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match="not a folder"):
        open_source(str(tmp_path / "f.bin")).resolve()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no files in this folder"):
        open_source(str(tmp_path / "empty")).resolve()


def test_clearml_uri_forms() -> None:
    assert parse_clearml_uri("clearml://abc123") == {"dataset_id": "abc123"}
    assert parse_clearml_uri("clearml://team/vision/cats@1.2.0") == {
        "dataset_project": "team/vision",
        "dataset_name": "cats",
        "dataset_version": "1.2.0",
    }
    with pytest.raises(ConfigError):
        parse_clearml_uri("clearml://")


def test_folder_source_refuses_links(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("a")
    os.symlink("/etc/passwd", tmp_path / "d" / "link")
    with pytest.raises(UnsafePathError, match="link"):
        FolderSource(tmp_path / "d").resolve()


def _clearml_source(tmp_path: Path) -> ClearMLSource:
    return ClearMLSource("clearml+file:///x", FolderStore(tmp_path), lambda: None)


def _obj(path: str, size: int) -> RemoteObject:
    e = Entry(path=path, size=size, checksum="sha256:00", locator=f"ds/data/{path}")
    return RemoteObject("chunk.zip", 0, None, (e,), archive=True)


def test_clearml_unpack_refuses_link_members(tmp_path: Path) -> None:
    z = tmp_path / "chunk.zip"
    with zipfile.ZipFile(z, "w") as zf:
        info = zipfile.ZipInfo("a.txt")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafePathError, match="not a regular file"):
        _clearml_source(tmp_path).unpack(_obj("a.txt", 11), z, tmp_path / "out")


def test_clearml_unpack_extracts_by_listing_never_by_member_name(tmp_path: Path) -> None:
    z = tmp_path / "chunk.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("../evil.txt", "evil")
        zf.writestr("a.txt", "hello")
    out = _clearml_source(tmp_path).unpack(_obj("a.txt", 5), z, tmp_path / "out")
    assert [p.read_bytes() for _e, p in out] == [b"hello"]
    assert all((tmp_path / "out") in p.parents for _e, p in out)
    assert not (tmp_path / "evil.txt").exists()
    with pytest.raises(IntegrityError, match="bytes in the chunk"):
        _clearml_source(tmp_path).unpack(_obj("a.txt", 4), z, tmp_path / "out2")


def _folder_obj(source: FolderSource, path: str) -> RemoteObject:
    entry = next(e for e in source.resolve().entries if e.path == path)
    return next(iter(source.objects([entry])))


def test_folder_source_refuses_fifos_at_resolve(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("a")
    os.mkfifo(tmp_path / "d" / "pipe")
    with pytest.raises(UnsafePathError, match="'pipe': not a regular file"):
        FolderSource(tmp_path / "d").resolve()


def test_folder_read_refuses_a_link_swapped_in_after_listing(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "secret").write_text("secret!")
    (tmp_path / "d" / "a.txt").write_text("public!")
    source = FolderSource(tmp_path / "d")
    obj = _folder_obj(source, "a.txt")
    (tmp_path / "d" / "a.txt").unlink()
    os.symlink(tmp_path / "secret", tmp_path / "d" / "a.txt")
    with pytest.raises(UnsafePathError, match="link"):
        b"".join(source.read(obj))


@pytest.mark.parametrize("change", ["grow", "rewrite"])
def test_folder_read_refuses_a_file_changed_since_listing(tmp_path: Path, change: str) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 100)
    source = FolderSource(tmp_path)
    obj = _folder_obj(source, "a.bin")
    if change == "grow":
        with open(f, "ab") as fh:
            fh.write(b"more")
    else:
        f.write_bytes(b"y" * 100)
        os.utime(f, ns=(1, 1))
    with pytest.raises(SourceError, match="a.bin changed since it was listed; re-resolve"):
        b"".join(source.read(obj))
    with pytest.raises(SourceError, match="changed since"):
        b"".join(source.read(obj, 10, 20))


def test_clearml_s3_chunk_urls_keep_their_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlstage.sources.clearml import s3_endpoint_for

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    stores: dict[str, object] = {}
    store, key = _store_for_url("s3://minio.lan:9000/bkt/ds/chunk.zip", stores)
    assert (store.bucket.name, key) == ("bkt", "ds/chunk.zip")  # type: ignore[attr-defined]
    assert store.bucket.config.endpoint == "http://minio.lan:9000"  # type: ignore[attr-defined]
    again, _ = _store_for_url("s3://minio.lan:9000/bkt/ds/chunk2.zip", stores)
    assert again is store  # one store (one connection pool) per endpoint and bucket
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://minio.lan:9000")
    assert s3_endpoint_for("minio.lan:9000") == "https://minio.lan:9000"


def test_clearml_url_chunks_share_one_http_client(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[object] = []

    class FakeHttp:
        def __init__(self, key: str) -> None:
            made.append(self)
            self._client = None

        def read(self, obj: RemoteObject, start: int, end: int) -> list[bytes]:
            return [obj.key.encode()]

    stores: dict[str, object] = {}
    store, key = _store_for_url("https://h/a.zip", stores)
    store._factory = FakeHttp  # type: ignore[attr-defined]
    assert _store_for_url("https://h/b.zip", stores)[0] is store
    for k in ("https://h/a.zip", "https://h/b.zip"):
        assert list(store.read(k, 1, None, 0, 1)) == [k.encode()]
    assert len(made) == 1


def test_http_client_reads_netrc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    rc = tmp_path / "netrc"
    rc.write_text("machine files.lan login alice password s3cret\n")
    rc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(rc))
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(200, headers={"Content-Length": "0"})

    source = HttpSource("https://files.lan/s-{0..0}.tar")
    client = source.client
    assert isinstance(client.auth, httpx.NetRCAuth)
    client._transport = httpx.MockTransport(handler)
    client.head("https://files.lan/s-0.tar")
    assert seen == [httpx.BasicAuth("alice", "s3cret")._auth_header]
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert HttpSource("https://files.lan/x").client.auth is None
