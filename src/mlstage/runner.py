"""Start a model's entrypoint on its staged data and collect its metrics.

Two forms: ``module:function`` is imported and called as ``fn(data_dir=Path, **params)`` and
returns a dict of metrics (or a number, recorded as ``score``); any other string is a command
line, formatted with ``{data_dir}`` and the parameters, whose last stdout line may be a JSON
object of metrics.
"""

from __future__ import annotations

import json
import re
import shlex
import string
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlstage.errors import ConfigError, RunError
from mlstage.recipes import import_entrypoint
from mlstage.specs import PY_ENTRYPOINT_RE

if TYPE_CHECKING:
    from mlstage.stream import StreamingDataset

Metrics = dict[str, Any]


COMMAND_FIELDS = ("data_dir", "ready_list")


def check_entrypoint(entrypoint: str, params: Mapping[str, Any] | None = None) -> None:
    """Fail fast (ConfigError) when an entrypoint cannot start: import it, or check the command.

    A command is formatted per argument with ``{data_dir}``, ``{ready_list}`` and the model's
    parameters, so any other ``{...}`` would fail at run time: write literal braces as ``{{``/``}}``.
    """
    if PY_ENTRYPOINT_RE.match(entrypoint):
        import_entrypoint(entrypoint)
        return
    if "{data_dir}" not in entrypoint:
        raise ConfigError(
            f"command {entrypoint!r} does not mention {{data_dir}}",
            hint="write e.g. 'python train.py --data {data_dir}'",
        )
    allowed = {*COMMAND_FIELDS, *(params or {})}
    hint = "only {data_dir}, {ready_list} and the model's params; write literal braces as {{ }}"
    try:
        args = shlex.split(entrypoint)
    except ValueError as exc:
        raise ConfigError(f"command {entrypoint!r} cannot be split: {exc}") from exc
    for arg in args:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(arg) if f is not None]
        except ValueError as exc:
            raise ConfigError(
                f"command {entrypoint!r}: bad braces in {arg!r}: {exc}", hint=hint
            ) from exc
        for f in fields:
            root = re.split(r"[.\[]", f, maxsplit=1)[0]
            if root not in allowed:
                raise ConfigError(
                    f"command {entrypoint!r}: unknown placeholder {{{f}}} in {arg!r}", hint=hint
                )


def _format_command(entrypoint: str, **values: Any) -> list[str]:
    """The command's argv with its placeholders filled; ConfigError when one cannot be."""
    try:
        return [arg.format(**values) for arg in shlex.split(entrypoint)]
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"command {entrypoint!r} cannot be formatted: {type(exc).__name__}: {exc}",
            hint="only {data_dir}, {ready_list} and the model's params; literal braces as {{ }}",
        ) from exc


def _as_metrics(value: Any) -> Metrics:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, int | float):
        return {"score": value}
    raise RunError(
        f"an entrypoint returned {type(value).__name__}; return a dict of metrics or a number"
    )


def run_entrypoint(
    entrypoint: str,
    data_dir: Path,
    params: Mapping[str, Any] | None = None,
    *,
    timeout: float | None = None,
) -> Metrics:
    """Run ``entrypoint`` on ``data_dir``; return its metrics. RunError when it fails."""
    params = dict(params or {})
    if PY_ENTRYPOINT_RE.match(entrypoint):
        fn = import_entrypoint(entrypoint)
        try:
            return _as_metrics(fn(data_dir=Path(data_dir), **params))
        except RunError:
            raise
        except Exception as exc:
            raise RunError(f"{entrypoint} failed: {type(exc).__name__}: {exc}") from exc
    argv = _format_command(entrypoint, data_dir=str(data_dir), **params)
    return _run_command(argv, timeout=timeout)


def _run_command(
    argv: list[str], *, timeout: float | None, env: dict[str, str] | None = None
) -> Metrics:
    """Run a command line; its last stdout line, if a JSON object, is its metrics."""
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
    except FileNotFoundError as exc:
        raise RunError(
            f"command not found: {argv[0]!r}", hint="is it installed on this node?"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise RunError(f"{argv[0]} timed out after {timeout} s") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RunError(f"{argv[0]} exited with {proc.returncode}: {' | '.join(tail)}")
    lines = proc.stdout.strip().splitlines()
    if lines:
        try:
            return _as_metrics(json.loads(lines[-1]))
        except (json.JSONDecodeError, RunError):
            pass
    return {}


def run_entrypoint_streaming(
    entrypoint: str,
    stream: StreamingDataset,
    params: Mapping[str, Any] | None = None,
    *,
    timeout: float | None = None,
) -> Metrics:
    """Run ``entrypoint`` while its data is still staging, if it can read that way.

    A ``module:function`` with a ``stream`` parameter is called at once as
    ``fn(data_dir=<folder being filled>, stream=<StreamingDataset>, **params)``; a command
    that mentions ``{ready_list}`` starts at once with ``{data_dir}`` = the folder being
    filled and ``{ready_list}`` (also ``$MLSTAGE_READY_LIST``) = the file naming each ready
    path. Any other entrypoint would see a partial folder, so it starts when the data is
    complete, on the finished dataset.
    """
    import inspect
    import os

    from mlstage.stream import READY_LIST_ENV

    params = dict(params or {})
    ready_list = str(stream.view.ready_list)
    if PY_ENTRYPOINT_RE.match(entrypoint):
        fn = import_entrypoint(entrypoint)
        try:
            takes_stream = "stream" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            takes_stream = False
        if not takes_stream:
            return run_entrypoint(entrypoint, stream.wait().path, params, timeout=timeout)
        try:
            return _as_metrics(fn(data_dir=stream.data_dir, stream=stream, **params))
        except RunError:
            raise
        except Exception as exc:
            raise RunError(f"{entrypoint} failed: {type(exc).__name__}: {exc}") from exc
    if "{ready_list}" not in entrypoint:
        return run_entrypoint(entrypoint, stream.wait().path, params, timeout=timeout)
    argv = _format_command(
        entrypoint, data_dir=str(stream.data_dir), ready_list=ready_list, **params
    )
    return _run_command(argv, timeout=timeout, env={**os.environ, READY_LIST_ENV: ready_list})
