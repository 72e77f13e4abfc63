"""The state DB: lineage of datasets, versions, artifacts, stagings and benchmark runs."""

from mlstage.redact import scrub_params, scrub_uri
from mlstage.state.db import head_revision, make_engine, mask_url, migrate
from mlstage.state.store import LineageRow, StateStore, VersionRow

__all__ = [
    "LineageRow",
    "StateStore",
    "VersionRow",
    "head_revision",
    "make_engine",
    "mask_url",
    "migrate",
    "scrub_params",
    "scrub_uri",
]
