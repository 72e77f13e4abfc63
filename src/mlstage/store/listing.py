"""Listing a whole prefix fast: its first level's sub-prefixes listed concurrently.

One S3 listing is a chain of pages of 1,000 keys, each asked for after the one before (the
continuation token): 1.3 million keys are 1,300 round trips one after another. When a prefix
holds sub-prefixes (``train/n01440764/...``), ``walk`` lists its first level with a delimiter
and then every sub-prefix at once, up to ``workers`` listings in flight, and still yields
the keys in order: a sub-prefix's keys sort together, between the first-level items before
and after it (S3 orders keys by UTF-8 bytes, which is Python's ``str`` order). Measured here:
10,000 keys in 8 sub-prefixes, rclone's server behind a proxy adding 50 ms per request: 0.88-1.63
s listed page after page, 0.43-0.50 s fanned out.

A flat prefix gains nothing from a delimiter listing and pays for it (obstore gathers every
page of one in memory before returning), and many small sub-prefixes would cost a request each
where a plain listing takes a page per 1,000 keys: ``walk`` looks at the first page of a plain
listing and fans out only when its keys lie below at most ``FAN_OUT_BELOW`` sub-prefixes (so
about 100 keys or more per sub-prefix, where a listing each costs at most ~10x the requests
and runs 16 at a time). Otherwise it goes on with that listing, page by page, resumable
(``Bucket.pages``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from mlstage.store.bucket import Bucket, Listed

PageCallback = Callable[[int], None]
FAN_OUT_BELOW = 10  # sub-prefixes in the first page (of 1,000 keys), at most


def walk(
    bucket: Bucket, prefix: str, *, workers: int = 16, on_page: PageCallback | None = None
) -> Iterator[Listed]:
    """Every object under ``prefix`` (ending in '/' or empty), in key order.

    ``on_page(n)`` is called with each page's object count as pages arrive (a progress
    display; from listing threads when fanned out).
    """
    pages = bucket.pages(prefix)
    first: list[Listed] = next(pages, [])
    below = {o.key[len(prefix) :].split("/", 1)[0] for o in first if "/" in o.key[len(prefix) :]}
    if not below or len(below) > FAN_OUT_BELOW:
        if on_page:
            on_page(len(first))
        yield from first
        for page in pages:
            if on_page:
                on_page(len(page))
            yield from page
        return
    pages.close()
    yield from _fanned_out(bucket, prefix, workers, on_page)


def _fanned_out(
    bucket: Bucket, prefix: str, workers: int, on_page: PageCallback | None
) -> Iterator[Listed]:
    objects, subprefixes = bucket.children(prefix)
    if on_page and objects:
        on_page(len(objects))
    items: list[tuple[str, Listed | None]] = [(o.key, o) for o in objects]
    items += [(p, None) for p in subprefixes]
    items.sort(key=lambda item: item[0])

    stop = threading.Event()

    def listing(sub: str) -> list[Listed]:
        out: list[Listed] = []
        for page in bucket.pages(sub):
            if stop.is_set():
                break
            if on_page:
                on_page(len(page))
            out += page
        return out

    ahead = max(1, workers) * 2  # listings started ahead of the one being yielded
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="mlstage-list")
    futures: dict[str, Future[list[Listed]]] = {}
    queued = iter(subprefixes)

    def refill() -> None:
        while len(futures) < ahead:
            sub = next(queued, None)
            if sub is None:
                return
            futures[sub] = pool.submit(listing, sub)

    try:
        refill()
        for key, obj in items:
            if obj is not None:
                yield obj
                continue
            below = futures.pop(key).result()
            refill()
            yield from below
    finally:
        # never wait: after a failure, an interruption or a consumer that stopped early,
        # the listings still in flight are of no use (and may hang on a silent endpoint)
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
