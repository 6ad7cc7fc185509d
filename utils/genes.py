"""Gene groups: the `gene_groups.csv` contract between 02_gene_clustering and training.

`gene_groups.csv` has columns `gene, group, strategy`: for each strategy, every gene of the
data in exactly one group.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from utils.paths import resolve

GROUP_COLUMNS = ("gene", "group", "strategy")


def load_gene_groups(path: str | os.PathLike, genes: list[str],
                     strategy: str) -> dict[str, np.ndarray]:
    """Group name → column indices into `genes`, for one strategy of a gene_groups.csv."""
    path = resolve(path)
    if not path.is_file():
        raise FileNotFoundError(f"gene groups file not found: {path} (written by "
                                "notebooks/02_gene_clustering.ipynb under its RUN_DIR)")
    table = pd.read_csv(path, dtype=str)
    if tuple(table.columns[:3]) != GROUP_COLUMNS:
        raise ValueError(f"{path}: columns must be {', '.join(GROUP_COLUMNS)}; found "
                         f"{list(table.columns)}")
    rows = table[table["strategy"] == strategy]
    if rows.empty:
        raise ValueError(f"{path}: no strategy {strategy!r}; it has "
                         f"{sorted(table['strategy'].unique())}")
    missing = sorted(set(genes) - set(rows["gene"]))
    unknown = sorted(set(rows["gene"]) - set(genes))
    duplicated = sorted(rows["gene"][rows["gene"].duplicated()].unique())
    if missing or unknown or duplicated:
        raise ValueError(f"{path} (strategy {strategy!r}) does not assign every gene once: "
                         f"{len(missing)} genes missing {missing[:10]}, {len(unknown)} unknown "
                         f"{unknown[:10]}, {len(duplicated)} duplicated {duplicated[:10]}")
    index = pd.Series(np.arange(len(genes)), index=genes)
    return {name: np.sort(index[part["gene"]].to_numpy())
            for name, part in rows.groupby("group", sort=True)}
