"""What every benchmark measures the same way: a command's wall time, CPU and peak memory,
and the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Timed:
    """One run of a command: from its start to its exit (the same clock for every tool)."""

    seconds: float
    user_seconds: float
    system_seconds: float
    peak_rss_mb: float
    returncode: int
    stdout: str
    stderr: str

    def row(self) -> dict[str, float]:
        d = asdict(self)
        for k in ("stdout", "stderr", "returncode"):
            d.pop(k)
        return {k: round(v, 3) for k, v in d.items()}


def run(cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> Timed:
    """Run ``cmd`` to completion: its wall time, and its own CPU and peak RSS (``wait4`` on
    this child alone). RuntimeError with its stderr's tail when it fails."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), env=env, cwd=cwd, stdout=out, stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {stderr.strip()[-500:]}")
    return Timed(
        seconds,
        usage.ru_utime,
        usage.ru_stime,
        usage.ru_maxrss / 1024,
        proc.returncode,
        stdout,
        stderr,
    )


def machine() -> dict[str, object]:
    """Cores, memory, kernel, load and the filesystem of the working folder."""
    facts: dict[str, object] = {
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_1m_5m_15m": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        facts["memory_gb"] = round(int(mem) / 1024 / 1024, 1)
    except (OSError, IndexError, ValueError):
        pass
    return facts


def filesystem(path: Path) -> str:
    """The type and options of the filesystem holding ``path`` (from /proc/mounts)."""
    best = ("", "")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _dev, mnt, kind, opts, *_ = line.split()
            if str(path.resolve()).startswith(mnt) and len(mnt) > len(best[0]):
                best = (mnt, f"{kind} ({opts})")
    except OSError:
        return "unknown"
    return best[1] or "unknown"


def emit(
    result: dict[str, Any], out: str | None, chart: Callable[[dict[str, Any], Path], None]
) -> None:
    """Print ``result`` as JSON; with ``out``, also write it there and its chart beside it."""
    text = json.dumps(result, indent=2)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        chart(result, path.with_suffix(".png"))
    print(text)
