"""Watching datasets: re-resolve cheaply, notice settled changes, record the new versions.

The watch list (YAML or JSON, see ``WatchList``) names the watched DatasetSpecs and what a
change should set off. ``watch`` re-resolves each one (an S3 listing with ETags, a folder's
sizes and mtimes, whatever the source's ``resolve`` lists; no bytes move), compares the
fingerprint with the version last announced, and returns a ``Change`` for each dataset that
settled on a new version. Settling is the debounce: a fingerprint counts only once it has been
seen unchanged for ``settle_seconds``, so an upload of 10k objects announces one change, for
its final state. Announcing is a compare-and-swap in the state DB, so several watchers (on
several machines) announce each change once. Prefect-free; flows emit the events.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mlstage.errors import ConfigError, MlstageError
from mlstage.events import EventSpec, dataset_changed
from mlstage.manifest import Manifest
from mlstage.redact import scrub_text, scrub_uri
from mlstage.specs import DatasetSpec
from mlstage.state import StateStore
from mlstage.state.claims import Coordination, Observation

WATCHLIST_ENV = "MLSTAGE_WATCHLIST"


class WatchEntry(BaseModel):
    """One watched dataset and what a change to it sets off."""

    model_config = ConfigDict(extra="forbid")

    dataset: DatasetSpec
    poll: bool = Field(
        default=True,
        description="Re-resolve on every watch-datasets run; false: only on pushed notifications.",
    )
    settle_seconds: float = Field(
        default=30.0,
        ge=0,
        description="A new fingerprint counts once it has been stable this long (debounce).",
    )
    warm_caches: list[str] = Field(
        default_factory=lambda: ["local"],
        description="Caches to stage the new artifact into: 'local' (this node's) or cache folders.",
    )
    rerun_stale: bool = Field(
        default=False, description="Re-run the benchmarks that consumed an older version."
    )

    @property
    def name(self) -> str:
        return self.dataset.name


class WatchList(BaseModel):
    """Every watched dataset; names are unique."""

    model_config = ConfigDict(extra="forbid")

    datasets: list[WatchEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> WatchList:
        names = [e.name for e in self.datasets]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"watched dataset names must be unique; repeated: {dup}")
        return self

    def entry(self, name: str) -> WatchEntry:
        """The entry for dataset ``name``; ConfigError when it is not watched."""
        for e in self.datasets:
            if e.name == name:
                return e
        raise ConfigError(
            f"dataset {name!r} is not in the watch list",
            hint=f"watched: {', '.join(e.name for e in self.datasets) or 'none'}",
        )

    @classmethod
    def load(cls, path: str | Path) -> WatchList:
        """Read a watch list from a ``.yaml``/``.yml`` or ``.json`` file."""
        p = Path(path).expanduser()
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(
                f"cannot read watch list {p}: {exc.strerror}",
                hint=f"pass --watchlist or set {WATCHLIST_ENV}",
            ) from exc
        try:
            if p.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text)
            return cls.model_validate(data)
        except (ValueError, TypeError) as exc:  # pydantic, json and yaml errors
            raise ConfigError(
                f"watch list {p} is malformed: {exc}", hint="see docs/restaging.md"
            ) from exc


def watchlist_path(explicit: str | Path | None = None) -> Path:
    """The watch list to use: ``explicit``, else $MLSTAGE_WATCHLIST, else MLSTAGE_HOME/watchlist.yaml."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(WATCHLIST_ENV)
    if env:
        return Path(env).expanduser()
    from mlstage.settings import get_settings

    return get_settings().home / "watchlist.yaml"


def configured_watchlist(explicit: str | Path | None = None) -> Path | None:
    """The watch list to use, or None when none was asked for and the default file
    (MLSTAGE_HOME/watchlist.yaml) does not exist: nothing is watched yet. A list that was
    asked for (``explicit`` or $MLSTAGE_WATCHLIST) is returned even when missing, so that
    loading it fails and names it."""
    path = watchlist_path(explicit)
    if explicit or os.environ.get(WATCHLIST_ENV) or path.exists():
        return path
    return None


@dataclass(frozen=True)
class Change:
    """A watched dataset settled on a new version, now recorded in the state DB."""

    dataset: str
    old_version: str | None
    new_version: str
    source: str
    version_id: int
    files: int
    bytes: int

    def event(self, via: str) -> EventSpec:
        """The ``mlstage.dataset.changed`` event announcing this change."""
        return dataset_changed(
            self.dataset, self.old_version, self.new_version, self.source, via=via
        )


@dataclass
class WatchReport:
    """One pass over the watch list: what changed, what is still settling, what failed."""

    changes: list[Change] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


class Clock(Protocol):
    def time(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Wall time and real sleeps."""

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


Resolver = Callable[[DatasetSpec], Manifest]


def resolve_manifest(spec: DatasetSpec) -> Manifest:
    """List ``spec``'s source (no bytes move): the cheap re-resolve every watch pass does."""
    from mlstage.sources import open_source

    return open_source(spec.uri).resolve()


class Watcher:
    """Observes watched datasets against the state DB; several may run at once, anywhere."""

    def __init__(
        self,
        store: StateStore,
        *,
        resolve: Resolver = resolve_manifest,
        clock: Clock | None = None,
        max_confirm_seconds: float = 60.0,
    ) -> None:
        self.store = store
        self.coord = Coordination(store)
        self.resolve = resolve
        self.clock = clock or SystemClock()
        self.max_confirm_seconds = max_confirm_seconds

    def _observe(self, entry: WatchEntry) -> tuple[Observation, Manifest]:
        manifest = self.resolve(entry.dataset)
        baseline = None
        first_sight = self.coord.watch_state(entry.name) is None
        if first_sight:
            current = [v.version for v in self.store.history(entry.name) if v.current]
            baseline = current[0] if current else None
        fp = manifest.fingerprint
        if first_sight and baseline is None:
            # the first sight is a version too: record it so lineage knows it
            self.store.record_version(
                entry.name, fp, entry.dataset.uri, len(manifest), manifest.total_bytes
            )
        obs = self.coord.observe(
            entry.name,
            fp,
            now=self.clock.time(),
            settle_seconds=entry.settle_seconds,
            baseline=baseline,
        )
        return obs, manifest

    def _settled(self, entry: WatchEntry, obs: Observation, manifest: Manifest) -> Change | None:
        if obs.verdict != "changed":
            return None
        # the version row is written before anyone emits, so restage finds it; idempotent
        row, _new = self.store.record_version(
            entry.name, obs.fingerprint, entry.dataset.uri, len(manifest), manifest.total_bytes
        )
        assert row.id is not None
        return Change(
            entry.name,
            obs.previous,
            obs.fingerprint,
            scrub_uri(entry.dataset.uri),
            row.id,
            len(manifest),
            manifest.total_bytes,
        )

    def check(self, entries: Iterable[WatchEntry], *, confirm: bool = True) -> WatchReport:
        """Observe every entry once; with ``confirm``, look again after the settle time.

        Confirming inside the pass lets a change that already stopped moving be announced on
        the pass that first sees it (latency: one interval plus the settle time) instead of
        the next one. A dataset whose source fails is reported in ``errors``; the others go on.
        """
        report = WatchReport()
        waiting: list[WatchEntry] = []
        for entry in entries:
            try:
                obs, manifest = self._observe(entry)
            except MlstageError as exc:
                report.errors[entry.name] = scrub_text(str(exc))
                continue
            if obs.verdict == "pending":
                waiting.append(entry)
                continue
            change = self._settled(entry, obs, manifest)
            if change:
                report.changes.append(change)
            elif obs.verdict != "lost":
                report.unchanged.append(entry.name)
        if waiting and confirm:
            self.clock.sleep(min(max(e.settle_seconds for e in waiting), self.max_confirm_seconds))
            again, waiting = waiting, []
            for entry in again:
                try:
                    obs, manifest = self._observe(entry)
                except MlstageError as exc:
                    report.errors[entry.name] = scrub_text(str(exc))
                    continue
                change = self._settled(entry, obs, manifest)
                if change:
                    report.changes.append(change)
                elif obs.verdict == "pending":
                    waiting.append(entry)
        report.pending = [e.name for e in waiting]
        return report


def watch(
    watchlist: WatchList, store: StateStore, *, confirm: bool = True, **kwargs: object
) -> WatchReport:
    """One polling pass over the entries with ``poll`` set (see ``Watcher.check``)."""
    watcher = Watcher(store, **kwargs)  # type: ignore[arg-type]
    return watcher.check([e for e in watchlist.datasets if e.poll], confirm=confirm)
