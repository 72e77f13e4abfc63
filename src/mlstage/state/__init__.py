"""The state DB: lineage of datasets, versions, artifacts, stagings and benchmark runs."""

from mlstage.state.db import make_engine, mask_url
from mlstage.state.store import LineageRow, StateStore

__all__ = ["LineageRow", "StateStore", "make_engine", "mask_url"]
