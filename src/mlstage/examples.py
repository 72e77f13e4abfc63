"""Small real models for the demo: fit and score scikit-learn estimators on staged shards.

Each sample is one ``.json`` file ``{"x": [...], "y": ...}`` packed into tar shards by the
``shard`` recipe. ``fit_and_score`` reads the staged shards, fits on 75 %, scores on 25 %.
"""

from __future__ import annotations

import importlib
import json
import threading
from pathlib import Path
from typing import Any

from mlstage.reader import iter_samples, shard_paths

ESTIMATORS = {
    "logistic": ("sklearn.linear_model", "LogisticRegression", {"max_iter": 2000}),
    "forest": (
        "sklearn.ensemble",
        "RandomForestClassifier",
        {"n_estimators": 50, "random_state": 0},
    ),
    "gboost": ("sklearn.ensemble", "GradientBoostingClassifier", {"random_state": 0}),
    "svc": ("sklearn.svm", "SVC", {"gamma": "scale"}),
    "ridge": ("sklearn.linear_model", "Ridge", {}),
}


# sklearn's modules import each other in a cycle (linear_model and svm through svm._base): two
# threads importing them at once can see a partially initialised module (ImportError). In-process
# models run on threads, so the first import happens under this lock.
_SKLEARN_IMPORT = threading.Lock()


def load_xy(data_dir: Path) -> tuple[list[list[float]], list[float]]:
    xs, ys = [], []
    shards = shard_paths(data_dir)
    if not shards:
        raise FileNotFoundError(f"no shards under {data_dir}")
    for sample in iter_samples(shards):
        row = json.loads(sample["json"])
        xs.append(row["x"])
        ys.append(row["y"])
    return xs, ys


def fit_and_score(data_dir: Path, estimator: str = "logistic", **params: Any) -> dict[str, Any]:
    """Fit ``estimator`` on the staged dataset and return its held-out score."""
    module, cls, defaults = ESTIMATORS[estimator]
    with _SKLEARN_IMPORT:
        from sklearn.model_selection import train_test_split

        estimator_cls = getattr(importlib.import_module(module), cls)
    model = estimator_cls(**{**defaults, **params})
    xs, ys = load_xy(data_dir)
    x_train, x_test, y_train, y_test = train_test_split(xs, ys, test_size=0.25, random_state=0)
    model.fit(x_train, y_train)
    return {"score": round(float(model.score(x_test, y_test)), 4), "samples": len(xs)}
