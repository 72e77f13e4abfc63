"""The object-store layer: every S3 request mlstage makes, on obstore (Rust ``object_store``).

    config.py   StoreConfig: endpoint, region, credentials, CA bundle, proxy, timeouts
    bucket.py   Bucket: paged listing, whole and ranged GETs on the listed ETag, put, delete
    listing.py  walk: a prefix listed in key order, its sub-prefixes concurrently
    ranges.py   which endpoints answer a ranged GET with 200 (their objects are read whole)
    errors.py   obstore's errors -> mlstage's, with the object's URI, status, S3 code, hint

Sources (``s3://``, ``clearml+s3://``) and the S3 shared tier read and write through it; none
of them speaks HTTP to S3 or retries by itself. HTTP(S) shard URLs stay on httpx
(``sources/http.py``): obstore's HTTPStore refuses a 200 answer to a ranged GET and reads no
netrc. The library never imports Prefect: a block builds a ``StoreConfig``.
"""

from mlstage.store.bucket import Bucket, Listed
from mlstage.store.config import StoreConfig
from mlstage.store.errors import RangesIgnored, map_error
from mlstage.store.listing import walk

__all__ = ["Bucket", "Listed", "RangesIgnored", "StoreConfig", "map_error", "walk"]
