"""The state DB: lineage of datasets, versions, artifacts, stagings and benchmark runs."""

from mlstage.redact import scrub_params, scrub_uri
from mlstage.state.db import make_engine
from mlstage.state.schema import head_revision, migrate, read_status, upgrade
from mlstage.state.store import LineageRow, StateStore, VersionRow
from mlstage.state.url import mask_url

__all__ = [
    "LineageRow",
    "StateStore",
    "VersionRow",
    "head_revision",
    "make_engine",
    "mask_url",
    "migrate",
    "read_status",
    "scrub_params",
    "scrub_uri",
    "upgrade",
]
