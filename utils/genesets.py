"""Functional gene sets for 02's `functional` strategy: GMT files (MSigDB, Enrichr and GO exports;
files or folders of `.gmt`), Enrichr libraries by name fetched once by gseapy into the cache,
matched to the data's genes by name, and one group per gene.

Sets overlap and cover part of the genes, so a gene in several sets joins the set whose other
genes it correlates with most in the training targets; sets left smaller than min_size dissolve
into their genes' next best sets; genes in no kept set go to `other` (or, with
unmatched="nearest", to the group whose genes they correlate with most). Offline (HF_HUB_OFFLINE,
or no connection) a library that is not cached fails fast, saying what to do.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from utils.bootstrap import ensure
from utils.choices import OTHER, UNMATCHED_RULES
from utils.data import CACHE_ENV_VAR
from utils.files import write_text
from utils.places import kit_root, resolve

ENRICHR_HOST = ("maayanlab.cloud", 443)  # where gseapy fetches Enrichr libraries from
OFFLINE_ENV_VAR = "HF_HUB_OFFLINE"  # the kit's "no network" switch (also used by 03)
LIBRARY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class OfflineError(ConnectionError):
    """A named gene-set library is neither cached nor reachable; the message says what to do."""


def read_gmt(path: str | os.PathLike) -> dict[str, list[str]]:
    """Gene sets of a GMT file: one set a line, `name<TAB>description<TAB>gene<TAB>gene…`.
    Repeated genes of a set count once; Enrichr's `GENE,weight` cells keep the gene."""
    path = resolve(path)
    if not path.is_file():
        raise FileNotFoundError(f"gene-set file not found: {path}")
    sets: dict[str, list[str]] = {}
    first: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            cells = line.rstrip("\r\n").split("\t")
            if not line.strip():
                continue
            members = [cell.split(",")[0].strip() for cell in cells[2:]]
            members = list(dict.fromkeys(gene for gene in members if gene))
            name = cells[0].strip()
            if not name or not members:
                raise ValueError(f"{path}, line {number}: a GMT line is name<TAB>description<TAB>"
                                 f"gene<TAB>gene… (tab-separated, at least one gene); got "
                                 f"{line.strip()[:80]!r}")
            if name in sets:
                raise ValueError(f"{path}, line {number}: gene set {name!r} again (first on "
                                 f"line {first[name]}); give each set one line")
            sets[name], first[name] = members, number
    if not sets:
        raise ValueError(f"{path}: no gene sets (a GMT file has one set a line)")
    return sets


def gene_set_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of fetched gene-set libraries: cache_dir, else `$KIT_CACHE_DIR/genesets` or the
    kit's `cache/genesets` (copy it into a Kaggle dataset to run offline)."""
    if cache_dir is not None:
        return resolve(cache_dir)
    return resolve(os.environ.get(CACHE_ENV_VAR) or kit_root() / "cache") / "genesets"


def offline_reason(host: tuple[str, int] = ENRICHR_HOST, timeout: float = 3.0) -> str | None:
    """Why the network cannot be used (HF_HUB_OFFLINE set, or no connection to `host` within
    `timeout` seconds, DNS included), or None when it can."""
    if os.environ.get(OFFLINE_ENV_VAR, "").strip().lower() in ("1", "true", "yes", "on"):
        return f"{OFFLINE_ENV_VAR} is set"

    outcome: dict[str, object] = {}

    def connect() -> None:
        try:
            socket.create_connection(host, timeout=timeout).close()
            outcome["ok"] = True
        except OSError as error:
            outcome["error"] = error

    # DNS lookups ignore socket timeouts: probe in a daemon thread and stop waiting for it.
    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout)
    if outcome.get("ok"):
        return None
    error = outcome.get("error")
    return (f"no connection to {host[0]} ({type(error).__name__}: {error})" if error else
            f"no connection to {host[0]} within {timeout:g} s")


def fetch_library(name: str, cache_dir: str | os.PathLike | None = None,
                  organism: str = "Human", timeout: float = 3.0) -> Path:
    """GMT file of an Enrichr library (e.g. MSigDB_Hallmark_2020): the cached copy, else
    downloaded once with gseapy and cached, so later and offline runs need no network."""
    if not LIBRARY_NAME.match(name):
        raise ValueError(f"{name!r} is neither a GMT file, a folder nor an Enrichr library name")
    path = gene_set_cache(cache_dir) / f"enrichr-{organism.lower()}" / f"{name}.gmt"
    if path.is_file():
        return path
    reason = offline_reason(ENRICHR_HOST, timeout)
    if reason:
        raise OfflineError(
            f"gene-set library {name!r} is not cached at {path} and cannot be fetched: "
            f"{reason}. Run 02 once with network (it is cached there), copy a GMT export of "
            "the library to that path, or list a .gmt file in GENE_SETS instead.")
    ensure("gseapy", "02's GENE_SETS (Enrichr libraries)")  # on first use: bundle or PyPI
    from gseapy.parser import download_library

    try:
        sets = download_library(name, organism=organism)
    except Exception as error:  # gseapy raises bare Exceptions for unknown names
        raise ValueError(f"Enrichr library {name!r} ({organism}) could not be fetched: {error} "
                         "(names: gseapy.get_library_name())") from error
    lines = [f"{set_name}\t{name}\t" + "\t".join(members)
             for set_name, members in sets.items() if members]
    return write_text(path, "\n".join(lines) + "\n")


def load_gene_sets(sources: str | Sequence[str], cache_dir: str | os.PathLike | None = None
                   ) -> dict[str, tuple[Path, dict[str, list[str]]]]:
    """Library → (GMT path, its sets) for each source: a .gmt file, a folder of .gmt files, or
    an Enrichr library name (fetch_library). A library is named after its file."""
    sources = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if not sources:
        raise ValueError("no gene sets: give GMT files, folders of them or Enrichr library names")
    libraries = {}
    for source in sources:
        path = resolve(source)
        if path.is_dir():
            files = sorted(path.glob("*.gmt"))
            if not files:
                raise FileNotFoundError(f"{path}: no .gmt files in the folder")
        elif path.is_file() or str(source).lower().endswith(".gmt") or "/" in str(source):
            files = [path]
        else:
            files = [fetch_library(str(source), cache_dir)]
        for file in files:
            key = file.stem if file.stem not in libraries else str(file)
            libraries[key] = (file, read_gmt(file))
    return libraries


def match_gene_sets(genes: Sequence[str], libraries: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Gene sets matched to the data's genes, case-insensitively: one row per (set, gene index)
    pair, and per library its sets, the sets that matched a gene and the genes matched."""
    rows = [(lib, name, gene) for lib, (_, sets) in libraries.items()
            for name, members in sets.items() for gene in members]
    pairs = pd.DataFrame(rows, columns=["library", "set", "key"])
    pairs["key"] = pairs["key"].str.upper()
    data = pd.DataFrame({"key": pd.Series(list(genes), dtype=str).str.upper(),
                         "gene": np.arange(len(genes))})
    matched = pairs.merge(data, on="key").drop_duplicates(["library", "set", "gene"])
    report = pd.DataFrame({
        "sets": pairs.groupby("library", sort=False)["set"].nunique(),
        "sets_matched": matched.groupby("library", sort=False)["set"].nunique(),
        "genes_listed": pairs.groupby("library", sort=False)["key"].nunique(),
        "genes_matched": matched.groupby("library", sort=False)["gene"].nunique()})
    return matched[["library", "set", "gene"]], report.fillna(0).astype(int)


def best_sets(corr: np.ndarray, member: np.ndarray, min_size: int) -> np.ndarray:
    """The set (column of the genes × sets `member` matrix) each gene joins, -1 for none.

    A gene in several sets joins the one whose other matched genes it correlates with most
    (mean r). A set left with fewer than min_size genes is dissolved, the smallest first, and
    its genes join their next best set; sets matching fewer than min_size genes never form.
    """
    sim = np.where(np.isfinite(corr), corr, 0.0).astype(np.float32)
    np.fill_diagonal(sim, 0.0)
    weights = member.astype(np.float32)
    others = weights.sum(0, keepdims=True) - weights
    # a set's only matched gene scores -2, below any mean r: it joins only if nothing else fits
    score = np.where(member, np.where(others > 0, (sim @ weights) / np.maximum(others, 1), -2.0),
                     -np.inf)
    score[:, member.sum(0) < min_size] = -np.inf

    def pick(rows: np.ndarray) -> np.ndarray:
        return np.where(np.isfinite(rows.max(1, initial=-np.inf)), rows.argmax(1), -1)

    choice = pick(score)
    alive = np.isfinite(score).any(0)
    while True:  # one pass per dissolved size: at most as many passes as sets
        sizes = np.bincount(choice[choice >= 0], minlength=member.shape[1])
        small = alive & (sizes < min_size)
        if not small.any():
            return choice
        drop = small & (sizes == sizes[small].min())
        alive &= ~drop
        score[:, drop] = -np.inf
        moved = drop[np.maximum(choice, 0)] & (choice >= 0)
        choice[moved] = pick(score[moved])


def nearest_groups(corr: np.ndarray, choice: np.ndarray) -> np.ndarray:
    """`choice` with every -1 gene given the group whose genes it correlates with most (mean r)."""
    if (choice < 0).all():
        return choice
    ids, inverse = np.unique(choice[choice >= 0], return_inverse=True)
    onehot = np.zeros((len(inverse), len(ids)), dtype=np.float32)
    onehot[np.arange(len(inverse)), inverse] = 1.0
    lost = np.flatnonzero(choice < 0)
    sim = np.where(np.isfinite(corr), corr, 0.0)[np.ix_(lost, np.flatnonzero(choice >= 0))]
    filled = choice.copy()
    filled[lost] = ids[(sim.astype(np.float32) @ onehot / onehot.sum(0)).argmax(1)]
    return filled


def group_names(sets: pd.DataFrame) -> list[str]:
    """File-safe, unique group names for (library, set) rows: 05 names one model per group."""
    safe = sets["set"].str.replace(r"[^A-Za-z0-9_.+-]+", "_", regex=True).str.strip("_.")
    safe = safe.str.slice(0, 80).replace("", "set")
    clash = safe.duplicated(keep=False) | safe.str.lower().eq(OTHER)
    safe = safe.where(~clash, sets["library"].str.replace(r"[^A-Za-z0-9_.+-]+", "_", regex=True)
                      + "." + safe)
    return [f"{name}.{i}" if twice else name
            for i, (name, twice) in enumerate(zip(safe, safe.duplicated(keep=False)))]


def functional_labels(genes: Sequence[str], corr: np.ndarray,
                      sources: str | Sequence[str] | None = None, min_size: int = 10,
                      unmatched: str = "other", cache_dir: str | os.PathLike | None = None
                      ) -> tuple[np.ndarray, dict]:
    """A group name per gene, and how they were made, from gene sets (GMT files, folders,
    Enrichr libraries; see best_sets for genes in several sets); genes in no kept set go to
    `other`, or with unmatched="nearest" to the group they correlate with most."""
    if not sources:
        raise ValueError("strategy 'functional' needs gene sets (GENE_SETS): GMT files, folders "
                         "of them or Enrichr library names")
    if unmatched not in UNMATCHED_RULES:
        raise ValueError(f"unmatched must be 'other' or 'nearest'; got {unmatched!r}")
    libraries = load_gene_sets(sources, cache_dir)
    pairs, report = match_gene_sets(genes, libraries)
    if pairs.empty:
        raise ValueError(f"none of the genes of {list(libraries)} is a gene of the data (matched "
                         "case-insensitively by name): are they symbols of the same species?")
    column, keys = pd.factorize(pd.MultiIndex.from_frame(pairs[["library", "set"]]))
    sets = pd.DataFrame(list(keys), columns=["library", "set"])
    member = np.zeros((len(genes), len(sets)), dtype=bool)
    member[pairs["gene"].to_numpy(), column] = True
    choice = best_sets(corr, member, min_size)
    in_set = choice >= 0
    if unmatched == "nearest":
        choice = nearest_groups(corr, choice)
    names = np.array([*group_names(sets), OTHER], dtype=object)
    labels = names[np.where(choice >= 0, choice, len(sets))].astype(str)
    kept = np.unique(choice[choice >= 0])
    info = {"libraries": {lib: {"path": str(libraries[lib][0]), **row}
                          for lib, row in report.astype(int).to_dict("index").items()},
            "genes_matched": int(member.any(1).sum()),
            "genes_in_several_sets": int((member.sum(1) > 1).sum()),
            "sets_matched": len(sets), "sets_kept": len(kept),
            "genes_in_no_kept_set": int((~in_set).sum()), "unmatched": unmatched,
            "min_size": min_size,
            "group_sets": {names[i]: f"{sets['library'][i]}: {sets['set'][i]}" for i in kept}}
    return labels, info


def describe_functional(info: dict) -> str:
    """One line on how the gene sets of a `functional` grouping became groups (02 prints it)."""
    return (f"{info['genes_matched']} genes in a matched set ({info['genes_in_several_sets']} in "
            f"several), {info['sets_matched']} sets matched a gene, {info['sets_kept']} kept as "
            f"groups of >= {info['min_size']} genes; {info['genes_in_no_kept_set']} genes in no "
            f"kept set → {'the nearest group' if info['unmatched'] == 'nearest' else OTHER}")


