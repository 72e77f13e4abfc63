"""A TCP proxy on 127.0.0.1 that adds latency and caps bandwidth, for tests and benchmarks.

``tc`` here has no netem, so delay is added in user space: every chunk is forwarded
``latency`` seconds after it arrived (in both directions, so a request/response round trip
costs about 2 x latency, and throughput is not reduced by it), and the bytes flowing back to
clients share one token bucket of ``bandwidth`` bytes/s, like one network link.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

_CHUNK = 64 * 1024


@dataclass(frozen=True)
class SlowLink:
    url: str
    port: int
    latency: float
    bandwidth: float | None


class _Bucket:
    """One link's bandwidth, shared by every connection in arrival order."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.next_free = 0.0

    async def take(self, n: int) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        start = max(now, self.next_free)
        self.next_free = start + n / self.rate
        await asyncio.sleep(self.next_free - now)


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    latency: float,
    bucket: _Bucket | None,
) -> None:
    q: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def pump() -> None:
        try:
            while data := await reader.read(_CHUNK):
                await q.put((time.monotonic() + latency, data))
        finally:
            await q.put((time.monotonic() + latency, b""))

    task = asyncio.ensure_future(pump())
    try:
        while True:
            due, data = await q.get()
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if not data:
                break
            if bucket is not None:
                await bucket.take(len(data))
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        task.cancel()
        writer.close()


@contextmanager
def slow_proxy(
    upstream_port: int,
    *,
    latency: float = 0.02,
    bandwidth: float | None = None,
    port: int = 0,
) -> Iterator[SlowLink]:
    """Proxy 127.0.0.1:<port> to 127.0.0.1:<upstream_port> in a background thread.

    ``latency`` seconds are added to each direction; ``bandwidth`` (bytes/s, None: no cap)
    caps the total flowing back from the upstream.
    """
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict[str, object] = {}

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            cw.close()
            return
        await asyncio.gather(
            _pipe(cr, uw, latency, None), _pipe(ur, cw, latency, down), return_exceptions=True
        )

    down = _Bucket(bandwidth)

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        box["server"] = server
        box["port"] = server.sockets[0].getsockname()[1]
        started.set()
        async with server:
            await server.serve_forever()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve())
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            box["error"] = exc
            started.set()

    thread = threading.Thread(target=run, name="mlstage-slow-proxy", daemon=True)
    thread.start()
    if not started.wait(10) or "error" in box:
        raise RuntimeError(f"slow proxy did not start: {box.get('error')}")
    bound = int(box["port"])  # type: ignore[call-overload]
    try:
        yield SlowLink(f"http://127.0.0.1:{bound}", bound, latency, bandwidth)
    finally:

        def stop() -> None:
            loop.set_exception_handler(lambda _loop, _ctx: None)  # connections cut on purpose
            for t in asyncio.all_tasks(loop):
                t.cancel()

        loop.call_soon_threadsafe(stop)
        thread.join(10)
