"""S3 and S3-compatible stores: ``s3://bucket/prefix``, read through ``mlstage.store``.

The endpoint, region and credentials come from the standard AWS environment
(``StoreConfig.from_env``) unless a ``Bucket`` (or ``StoreConfig``) is given, as the S3
shared tier does with its block's. Listing fans out over the prefix's first level
(``store.walk``); every read is conditional on the listed ETag.

Verification, one rule for every source (``transfer``): the size always; the content
checksum where the listing gives one. Here that is the MD5 a single-part object's ETag holds
(32 hex digits); a multipart object's ETag (``<hex>-<parts>``) is no content checksum, so it
is checked by size and ``If-Match`` only. S3's ``x-amz-checksum-*`` response headers are not
exposed by obstore, so they are not used.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from urllib.parse import urlparse

from mlstage.errors import ConfigError, ObjectNotFound, TransientError
from mlstage.manifest import Entry, Manifest, ManifestBuilder
from mlstage.paths import safe_relpath
from mlstage.retry import RetryPolicy, gave_up
from mlstage.sources.base import FileObjectSource, RemoteObject
from mlstage.store import Bucket, StoreConfig, walk
from mlstage.store import ranges as _ranges

_MD5_ETAG = re.compile("[0-9a-f]{32}")
# the smallest part size (Settings.part_size): below it no object is ever split, so no
# endpoint needs asking whether it honours ranges
_SPLITTABLE = 1024 * 1024
# what botocore itself accepts (S3-compatible stores allow more than AWS's rules)
_BUCKET = re.compile(r"[a-zA-Z0-9.\-_]{1,255}")


def etag_md5(etag: str | None) -> str | None:
    """``md5:<hex>`` when an S3 ETag is its object's MD5 (a single-part upload), else None."""
    etag = (etag or "").strip('"')
    return f"md5:{etag}" if _MD5_ETAG.fullmatch(etag) else None


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix without leading slash)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(f"not an S3 URI: {uri!r}", hint="write s3://bucket/prefix")
    if parsed.username or parsed.password:
        raise ConfigError(
            "credentials do not belong in an S3 URI",
            hint="use a Prefect block or the AWS environment",
        )
    if not _BUCKET.fullmatch(parsed.netloc):
        raise ConfigError(
            f"{uri}: {parsed.netloc!r} is not a bucket name",
            hint="bucket names are letters, digits, '.', '-' and '_' (AWS: 3-63 lowercase)",
        )
    return parsed.netloc, parsed.path.lstrip("/")


class S3Source(FileObjectSource):
    """Every object under ``s3://bucket/prefix``; keys become paths relative to the prefix.

    Single-part objects carry their MD5 (the ETag) as checksum; every GET is conditional on the
    listed ETag, so an object replaced after ``resolve`` fails loudly instead of mixing versions.
    """

    def __init__(
        self,
        bucket: str | Bucket,
        prefix: str = "",
        *,
        config: StoreConfig | None = None,
        retry: RetryPolicy | None = None,
        list_workers: int = 16,
    ) -> None:
        """``bucket``: a name (reached as ``config`` says, by default the AWS environment) or
        a ``Bucket`` to share (its configuration and connection pool)."""
        self.store = bucket if isinstance(bucket, Bucket) else Bucket(bucket, config, retry=retry)
        self.bucket = self.store.name
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.uri = f"s3://{self.bucket}/{self.prefix}"
        self.retry = retry or self.store.retry
        self.list_workers = list_workers
        self.listed = 0  # objects seen by the listing in progress (a progress display reads it)

    @property
    def supports_ranges(self) -> bool:  # type: ignore[override]
        """False once the endpoint answered a ranged GET with 200 (``store.ranges``)."""
        return _ranges.known(self.store.config.endpoint_id) is not False

    def resolve(self) -> Manifest:
        """One listing, fanned out over the prefix's first level, streamed into the manifest
        a page at a time (keys come in order: nothing is sorted after); no object is read."""
        self.listed = 0
        try:
            manifest = self._listing()
        except TransientError as exc:
            raise gave_up(exc, "the endpoint keeps failing; retry later") from exc
        if not len(manifest):
            raise ObjectNotFound(
                f"{self.uri}: no objects under this prefix",
                hint="check the prefix (it is case-sensitive)",
            )
        return manifest

    def _count(self, n: int) -> None:
        self.listed += n  # from listing threads: a display value, an exact count is not needed

    def _listing(self) -> Manifest:
        builder = ManifestBuilder(self.uri)
        held: Entry | None = None  # an empty object that may be a folder marker
        for key, size, etag in walk(
            self.store, self.prefix, workers=self.list_workers, on_page=self._count
        ):
            if not key.startswith(self.prefix) or key == self.prefix:
                continue  # the prefix's own folder marker ("p/", listed as "p")
            rel = key[len(self.prefix) :]
            if held is not None and not rel.startswith(held.locator + "/"):
                builder.add(held)  # an empty object, not a marker: nothing lies below it
            held = None
            entry = Entry(
                path=safe_relpath(rel, origin=self.uri),
                size=size,
                checksum=etag_md5(etag),
                etag=etag or None,
                locator=rel,
            )
            if size == 0:
                # obstore lists a folder marker ("dir/") as "dir": dropped when keys follow
                # below it, as every S3 tool skips markers
                held = entry
            else:
                builder.add(entry)
        if held is not None:
            builder.add(held)
        return builder.build()

    def objects(self, entries: Iterable[Entry]) -> Iterator[RemoteObject]:  # type: ignore[override]
        """One download per entry, made as they are consumed; before the first one large
        enough to be split into ranged parts is handed out, the endpoint is asked (once per
        process) whether it honours ranges, so the transfer knows whether to split it."""
        endpoint = self.store.config.endpoint_id
        for obj in super().objects(entries):
            if obj.size > _SPLITTABLE and _ranges.known(endpoint) is None:
                self.store.honours_ranges(self.prefix + obj.key, obj.etag)
            yield obj

    def read(self, obj: RemoteObject, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes [start, end) of one object, conditional on its listed ETag."""
        end = obj.size if end is None else end
        if end <= start:
            return iter(())
        if not self.store.config.etag_is_md5:
            obj.meta["etag_is_not_md5"] = "1"  # SSE-KMS / SSE-C buckets (MLSTAGE_S3_ETAG_IS_MD5)
        key = self.prefix + obj.key
        return self.store.read(key, start, end, size=obj.size, etag=obj.etag)


def from_uri(uri: str) -> S3Source:
    """The S3Source for ``s3://bucket/prefix``, reached as the AWS environment says."""
    bucket, prefix = parse_s3_uri(uri)
    return S3Source(bucket, prefix)
