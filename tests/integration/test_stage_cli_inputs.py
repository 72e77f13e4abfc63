"""``mlstage stage URI`` as a user runs it (a real process) on input it must refuse: one line on
stderr with a hint, a non-zero exit, no traceback, and never a secret repeated."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
MLSTAGE = str(Path(sys.executable).parent / "mlstage")
SECRET = "s3cr3tV4lue"


def stage(args: list[str], home: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLSTAGE_"))}
    env.update({"MLSTAGE_HOME": str(home), "AWS_EC2_METADATA_DISABLED": "true", **extra})
    return subprocess.run(
        [MLSTAGE, "stage", *args], env=env, capture_output=True, text=True, timeout=120
    )


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    """The single line a refused command printed (asserting that is all it printed)."""
    assert out.returncode != 0, out.stdout
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("mlstage: error: ") and "hint:" in lines[0], lines[0]
    assert "Traceback" not in out.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("uri", "expect"),
    [
        ("http://h/{0..30000000}.tar", "expands to 30,000,001 URLs"),
        ("http://h/{0..999}{0..999}{0..9}.tar", "expands to 10,000,000 URLs"),
        (f"clearml+s3://AKIAEXAMPLE:{SECRET}@bucket/p/ds.1", "clearml+s3://bucket/p/ds.1"),
        (f"clearml+file://user:{SECRET}@/data/ds.1", "clearml+file:///data/ds.1"),
        (f"s3://AKIAEXAMPLE:{SECRET}@bucket/data", "credentials do not belong"),
        (f"https://{SECRET}@h/s-{{0..1}}.tar", "credentials do not belong"),
        (f"https://h/s-{{0..1}}.tar#access_token={SECRET}", "fragment"),
        (f"s3://bucket/ds/?X-Amz-Signature={SECRET}", "query"),
        (f"clearml://abc123?token={SECRET}", "query"),
        ("https://[::1/x.tar", "not a valid URI"),
    ],
)
def test_refused_input_is_one_line_that_repeats_no_secret(
    tmp_path: Path, uri: str, expect: str
) -> None:
    out = stage([uri, "--json"], tmp_path / "home")
    line = one_line_error(out)
    assert out.returncode == 2  # a ConfigError: the input, not the world, is wrong
    assert expect in line
    assert SECRET not in out.stderr + out.stdout and "AKIAEXAMPLE" not in out.stderr
    assert len(line) < 600


class _AnyFile(BaseHTTPRequestHandler):
    """Every URL is a 1-byte file; GETs are counted (a HEAD is listing, a GET is a download)."""

    protocol_version = "HTTP/1.1"
    gets: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1")
        self.send_header("ETag", '"e1"')
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def do_GET(self) -> None:
        self.gets.append(self.path)
        self.do_HEAD()
        self.wfile.write(b"x")


@pytest.fixture
def any_file_server() -> Iterator[str]:
    _AnyFile.gets = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AnyFile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_key_too_long_for_the_cache_is_refused_before_any_download(
    tmp_path: Path, any_file_server: str
) -> None:
    long_part = "/".join(["d" * 250] * 16) + "/" + "f" * 72  # a/<this> is a 4,090-byte key
    out = stage([f"{any_file_server}/{{a,b}}/{long_part}"], tmp_path / "home")
    line = one_line_error(out)
    assert _AnyFile.gets == []  # listed (HEAD), never downloaded
    assert "(4090 bytes)" in line and "longer than a file system allows" in line
    assert "MLSTAGE_CACHE_DIR" in line and len(line) < 600
    assert "File name too long" not in line


def test_a_key_too_long_for_the_to_folder_is_refused_before_any_download(
    tmp_path: Path, any_file_server: str
) -> None:
    long_part = "/".join(["d" * 250] * 13) + "/f.bin"  # a/<this>: 3,270 bytes, fits the cache
    to = tmp_path.joinpath(*["t" * 250] * 3)  # but not under this --to folder
    out = stage([f"{any_file_server}/{{a,b}}/{long_part}", "--to", str(to)], tmp_path / "home")
    line = one_line_error(out)
    assert _AnyFile.gets == [] and "--to folder" in line
    assert not to.exists()
