"""`make demo`: the whole staged pipeline on embedded defaults, no server.

Writes five scikit-learn datasets into a local "remote" folder as many small files (one JSON
per sample), then runs benchmark-sweep in Prefect's ephemeral mode: resolve -> preprocess
(pack into shards) -> publish to the shared tier -> stage to the local cache (concurrently)
-> fit and score each model -> record lineage. Run it twice: the second run stages nothing.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from mlstage.settings import get_settings
from mlstage.specs import DatasetSpec, ModelSpec, RecipeSpec, SweepSpec

DEMO = {
    # dataset loader           model name        estimator
    "iris": ("load_iris", "iris-logistic", "logistic"),
    "wine": ("load_wine", "wine-forest", "forest"),
    "breast_cancer": ("load_breast_cancer", "cancer-gboost", "gboost"),
    "digits": ("load_digits", "digits-svc", "svc"),
    "diabetes": ("load_diabetes", "diabetes-ridge", "ridge"),
}


def write_remote(root: Path) -> dict[str, Path]:
    """Each dataset once as one small JSON file per sample (kept as is on later runs)."""
    import sklearn.datasets

    out = {}
    for name, (loader, _model, _est) in DEMO.items():
        folder = root / name
        out[name] = folder
        if folder.is_dir():  # it appears whole: renamed into place once written
            continue
        data = getattr(sklearn.datasets, loader)()
        tmp = folder.with_name(f".{name}.tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        for i, (x, y) in enumerate(zip(data.data.tolist(), data.target.tolist(), strict=True)):
            (tmp / f"sample-{i:05d}.json").write_text(json.dumps({"x": x, "y": y}))
        os.replace(tmp, folder)
    return out


def demo_sweep(remote: dict[str, Path]) -> SweepSpec:
    recipe = RecipeSpec(name="shard", params={"target_bytes": 64 * 1024})
    return SweepSpec(
        name="demo",
        datasets=[DatasetSpec(name=n, uri=str(p), recipe=recipe) for n, p in remote.items()],
        models=[
            ModelSpec(
                name=model,
                dataset=n,
                entrypoint="mlstage.examples:fit_and_score",
                params={"estimator": est},
            )
            for n, (_l, model, est) in DEMO.items()
        ],
    )


def lineage_command() -> str:
    """``mlstage lineage runs`` as this shell can type it: the venv's binary, this home."""
    import shlex

    exe = Path(sys.executable).parent / "mlstage"
    shown = os.path.relpath(exe) if exe.is_relative_to(Path.cwd()) else str(exe)
    home = shlex.quote(str(get_settings().home))
    return f"MLSTAGE_HOME={home} {shlex.quote(shown)} lineage runs"


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="mlstage demo: benchmark-sweep")
    cols = [
        "model",
        "dataset",
        "version",
        "cache",
        "data_from",
        "bytes_staged",
        "ready_s",
        "score",
        "status",
    ]
    for c in cols:
        table.add_column(
            c, justify="right" if c in ("bytes_staged", "ready_s", "score") else "left"
        )
    for r in rows:
        table.add_row(*["" if r.get(c) is None else str(r[c]) for c in cols])
    console = Console(width=max(120, Console().width))
    console.print(table)
    staged = sum(r["bytes_staged"] or 0 for r in rows)
    if all(r["cache"] == "hit" for r in rows):
        console.print("All datasets were cache hits: nothing was staged (0 bytes moved).")
    else:
        console.print(f"Staged {staged:,} bytes into the node-local cache.")
    console.print(f"See what each run consumed: {lineage_command()}", soft_wrap=True)


def main() -> int:
    settings = get_settings()
    print(f"MLSTAGE_HOME={settings.home}")
    remote = write_remote(settings.home / "remote")
    from flows.benchmark_sweep import SweepFailed, benchmark_sweep

    try:
        rows = benchmark_sweep(demo_sweep(remote))
    except SweepFailed as exc:
        print_table(exc.rows)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
