"""A fault-injecting HTTP proxy for tests and benchmarks: put it in front of moto (or any server).

It forwards every request to ``upstream`` over keep-alive connections and, as configured at
runtime, adds latency, answers ``503 SlowDown`` or ``500 InternalError``, cuts bodies mid-way,
resets connections, denies credentials, or caps bandwidth. It counts requests per
``(method, path)`` so tests can assert "served once". Typical use::

    with moto_server() as s3, fault_proxy(s3.url) as proxy:
        proxy.configure(latency=0.02, faults=[Fault("slowdown", times=3)])
        ...  # point AWS_ENDPOINT_URL at proxy.url
        assert proxy.count("GET", "/bucket/key") == 1
        proxy.reset()  # no faults, no latency, counters cleared

Faults are matched in order against each request; the first that fires wins:

    kind        what the client sees
    slowdown    503 with S3's <Code>SlowDown</Code>
    error500    500 with <Code>InternalError</Code>
    truncate    the upstream status and headers, then the body cut after ``after_bytes``
                (default: half) and the connection closed
    corrupt     the upstream response with one body byte flipped (at ``after_bytes``,
                default: the middle); same length, wrong content
    reset       the connection closed without any response (RST)
    deny        403 with <Code>InvalidAccessKeyId</Code>
    stall       nothing at all: the request is read, then no byte is sent back until the
                client gives up and closes the connection (a hung endpoint)
    norange     the request forwarded without its Range header: ``200`` and the whole body,
                as a server that ignores ranges answers
    range200    a ranged answer with status ``200`` instead of ``206``, its Content-Range
                kept (rclone's ``serve s3`` 1.75 answers ranges so)

A fault applies to requests whose method equals ``method`` (default GET; "*" for any) and whose
path contains ``key`` (default: any); it fires for the first ``times`` matches (default
always), or with ``probability`` if given. The control API lives on the proxy itself under
``/_faults/`` (``config``, ``counts``, ``reset``), so a proxy in another process (``-m
mlstage.testing.faults``; benchmarks use that, to keep the proxy off their own GIL) is
driven exactly like one in this process.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from mlstage.testing.net import free_port, port_open, stop_process, wait_until

KINDS = (
    "slowdown",
    "error500",
    "truncate",
    "corrupt",
    "reset",
    "deny",
    "stall",
    "norange",
    "range200",
)
_FORWARDED = ("truncate", "corrupt", "norange", "range200")  # faults that change a forward
_CONTROL = "/_faults/"
_BUF = 256 * 1024
_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
}


@dataclass
class Fault:
    """One fault rule (see the module docstring)."""

    kind: str
    key: str | None = None
    method: str = "GET"
    times: int | None = None
    probability: float | None = None
    after_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {KINDS}")


@dataclass
class _Config:
    latency: float = 0.0
    bandwidth: int = 0  # bytes/s per response; 0 = unlimited
    faults: list[Fault] = field(default_factory=list)


class _State:
    """Rules and counters shared by the proxy's handler threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.config = _Config()
        self.counts: Counter[str] = Counter()
        self.fired: Counter[str] = Counter()

    def pick(self, method: str, path: str) -> Fault | None:
        with self.lock:
            self.counts[f"{method} {path}"] += 1
            for f in self.config.faults:
                if f.method != "*" and f.method != method:
                    continue
                if f.key is not None and f.key not in path:
                    continue
                if f.times is not None:
                    if f.times <= 0:
                        continue
                    f.times -= 1
                elif f.probability is not None and random.random() >= f.probability:
                    continue
                self.fired[f.kind] += 1
                return f
            return None


def _error_body(code: str, message: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>{message}</Message><RequestId>mlstage-faults</RequestId></Error>"
    ).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    # -- upstream connections, one per handler thread ---------------------------------
    def _upstream(self) -> http.client.HTTPConnection:
        local = self.server.local
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.server.up_host, self.server.up_port, timeout=120)
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            local.conn = conn
        return conn

    def _drop_upstream(self) -> None:
        conn = getattr(self.server.local, "conn", None)
        if conn is not None:
            conn.close()
            self.server.local.conn = None

    # -- dispatch ------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._handle()

    do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

    def _handle(self) -> None:
        if self.path.startswith(_CONTROL):
            self._control()
            return
        state = self.server.state
        path = urlsplit(self.path).path
        fault = state.pick(self.command, path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if state.config.latency:
            time.sleep(state.config.latency)
        if fault is not None and fault.kind not in _FORWARDED:
            self._inject(fault)
            return
        self._forward(body, fault)

    def _inject(self, fault: Fault) -> None:
        if fault.kind == "stall":
            self.close_connection = True
            self.connection.settimeout(600)
            try:
                while self.connection.recv(65536):  # until the client closes (or 10 min)
                    pass
            except OSError:
                pass
            return
        if fault.kind == "reset":
            # SO_LINGER 0: close() sends RST, as a dying load balancer would
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        status, code, msg = {
            "slowdown": (503, "SlowDown", "Please reduce your request rate."),
            "error500": (500, "InternalError", "We encountered an internal error."),
            "deny": (403, "InvalidAccessKeyId", "The access key does not exist."),
        }[fault.kind]
        payload = _error_body(code, msg)
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _forward(self, body: bytes | None, fault: Fault | None) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        if fault is not None and fault.kind == "norange":
            headers = {k: v for k, v in headers.items() if k.lower() != "range"}
        for attempt in (0, 1):
            conn = self._upstream()
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                break
            except (ConnectionError, http.client.HTTPException, OSError):
                self._drop_upstream()
                if attempt:
                    self.send_error(502, "upstream unreachable")
                    return
        if fault is not None and fault.kind == "range200" and resp.status == 206:
            self.send_response(200, "OK")
        else:
            self.send_response(resp.status, resp.reason)
        length = resp.getheader("Content-Length")
        for k, v in resp.getheaders():
            if k.lower() not in _HOP and k.lower() != "content-length":
                self.send_header(k, v)
        total = int(length) if length is not None else None
        if total is None and self.command != "HEAD":
            data = resp.read()
            total = len(data)
            chunks: Iterator[bytes] = iter([data])
        else:
            chunks = iter(lambda: resp.read(_BUF), b"")
        self.send_header("Content-Length", str(total or 0))
        self.end_headers()
        if self.command == "HEAD":
            resp.read()
            return
        cut = flip = None
        if fault is not None and fault.kind in ("truncate", "corrupt"):
            at = fault.after_bytes if fault.after_bytes is not None else (total or 0) // 2
            if fault.kind == "truncate":
                cut = at
            elif total:
                flip = min(at, total - 1)
        sent = 0
        rate = self.server.state.config.bandwidth
        started = time.monotonic()
        for chunk in chunks:
            if cut is not None and sent + len(chunk) >= cut:
                self.wfile.write(chunk[: max(0, cut - sent)])
                self.wfile.flush()
                self._drop_upstream()  # the rest of the upstream body is abandoned
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if flip is not None and sent <= flip < sent + len(chunk):
                b = bytearray(chunk)
                b[flip - sent] ^= 0xFF
                chunk = bytes(b)
            self.wfile.write(chunk)
            sent += len(chunk)
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)

    # -- control API ---------------------------------------------------------------------
    def _control(self) -> None:
        state = self.server.state
        what = self.path[len(_CONTROL) :].split("?")[0]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if what == "config" and self.command in ("POST", "PUT"):
            spec = json.loads(raw or b"{}")
            with state.lock:
                state.config = _Config(
                    latency=float(spec.get("latency", 0.0)),
                    bandwidth=int(spec.get("bandwidth", 0)),
                    faults=[Fault(**f) for f in spec.get("faults", [])],
                )
            out: Any = {"ok": True}
        elif what == "counts":
            with state.lock:
                out = {"requests": dict(state.counts), "fired": dict(state.fired)}
        elif what == "reset":
            with state.lock:
                state.config = _Config()
                state.counts.clear()
                state.fired.clear()
            out = {"ok": True}
        else:
            self.send_error(404, "unknown control path")
            return
        payload = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512

    def __init__(self, port: int, upstream: str) -> None:
        up = urlsplit(upstream)
        self.up_host = up.hostname or "127.0.0.1"
        self.up_port = up.port or 80
        self.state = _State()
        self.local = threading.local()
        super().__init__(("127.0.0.1", port), _Handler)


class FaultProxy:
    """A handle on a running proxy (in this process or another): its URL and its controls."""

    def __init__(self, url: str, pid: int | None = None) -> None:
        self.url = url
        self.pid = pid  # the proxy's process when it runs in its own (benchmarks read its CPU)
        parts = urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80

    def _call(self, method: str, what: str, payload: Any = None) -> Any:
        conn = http.client.HTTPConnection(self._host, self._port, timeout=30)
        try:
            body = json.dumps(payload).encode() if payload is not None else None
            conn.request(method, _CONTROL + what, body=body)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"fault proxy {what}: HTTP {resp.status}")
            return json.loads(data)
        finally:
            conn.close()

    def configure(
        self, *, latency: float = 0.0, bandwidth: int = 0, faults: list[Fault] | None = None
    ) -> None:
        """Replace the rules: ``latency`` seconds per request, ``bandwidth`` bytes/s, ``faults``."""
        self._call(
            "POST",
            "config",
            {
                "latency": latency,
                "bandwidth": bandwidth,
                "faults": [asdict(f) for f in faults or []],
            },
        )

    def reset(self) -> None:
        """No latency, no faults, counters cleared."""
        self._call("POST", "reset")

    def counts(self) -> dict[str, int]:
        """Requests seen so far, keyed ``"METHOD /path"`` (faulted ones included)."""
        return dict(self._call("GET", "counts")["requests"])

    def fired(self) -> dict[str, int]:
        """How many times each fault kind fired."""
        return dict(self._call("GET", "counts")["fired"])

    def count(self, method: str, path: str) -> int:
        """Requests seen for exactly ``method`` and ``path`` (e.g. ``GET /bucket/key``)."""
        return self.counts().get(f"{method} {path}", 0)


@contextmanager
def fault_proxy(
    upstream: str, *, port: int | None = None, in_process: bool = True
) -> Iterator[FaultProxy]:
    """Run a fault proxy on 127.0.0.1 in front of ``upstream``; stopped on exit.

    ``in_process=False`` runs it in a child process (for benchmarks: the proxy then does not
    compete with the code under test for this interpreter's GIL).
    """
    port = port or free_port()
    if in_process:
        server = _ProxyServer(port, upstream)
        thread = threading.Thread(target=server.serve_forever, daemon=True, name="fault-proxy")
        thread.start()
        try:
            yield FaultProxy(f"http://127.0.0.1:{port}")
        finally:
            server.shutdown()
            server.server_close()
        return
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlstage.testing.faults",
            "--upstream",
            upstream,
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    try:
        wait_until(lambda: port_open(port), timeout=30, what=f"fault proxy on port {port}")
        yield FaultProxy(f"http://127.0.0.1:{port}", pid=proc.pid)
    finally:
        stop_process(proc)


def main() -> None:
    """Run a proxy in the foreground: ``python -m mlstage.testing.faults --upstream URL``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", required=True)
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    server = _ProxyServer(args.port or free_port(), args.upstream)
    server.serve_forever()


if __name__ == "__main__":
    main()
