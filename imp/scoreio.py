"""Score interchange: a scores file (:mod:`imp.scores`) as CSV, ``.npy`` or Parquet, and back.

An exported table has one row per training example in the canonical order, ascending
``index`` (the example's position in the original training set), with the columns
``index`` (int64), ``label`` (int64, the label scored against) and ``score`` (float64, the
mean over runs), plus ``run_0`` .. ``run_<R-1>`` (float64, each run's score) when R > 1.
Floats are written exactly (CSV: Python's shortest round-trip ``repr``; ``inf`` for an
infinite forgetting score), so export then import gives back the same numbers.

Its metadata (:data:`KEYS`, :data:`OPTIONAL_KEYS`) travels with it: CSV as leading
``# key: value`` lines before the header; ``.npy`` (a structured array of the columns) in a
sidecar JSON object ``<file>.npy.json`` next to it; Parquet in the schema's key-value
metadata. ``index_hash`` (:func:`index_hash`) pins the examples and labels, so an import
refuses scores of another data set, split, validation carve-out or label noise.
"""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imp.base import names, store
from imp.base.errors import UserError
from imp.data import Dataset
from imp.scores import ORIENTATIONS, SCORES, read_scores

FORMATS = ("csv", "npy", "parquet")
SPLIT = "train"
# Required metadata: the data set's name, the split, N, the index/label hash, the score, its
# step t (a duration), R runs, and the orientation ("high_is_hard" or "high_is_easy").
KEYS = ("dataset", "split", "examples", "index_hash", "score", "step", "runs", "orientation")
OPTIONAL_KEYS = ("iterations", "data_fingerprint")  # t in iterations; the data's fingerprint
INTEGER_KEYS = ("examples", "runs", "iterations")


@dataclass(frozen=True)
class ScoreTable:
    """The exported rows (ascending ``index``) and their metadata (:data:`KEYS`)."""

    meta: dict
    index: np.ndarray  # int64 (N,)
    labels: np.ndarray  # int64 (N,)
    mean: np.ndarray  # float64 (N,)
    per_run: np.ndarray  # float64 (R, N); one row equal to ``mean`` when R = 1

    def columns(self) -> dict[str, np.ndarray]:
        out = {"index": self.index, "label": self.labels, "score": self.mean}
        if len(self.per_run) > 1:
            out.update({f"run_{r}": row for r, row in enumerate(self.per_run)})
        return out


def index_hash(index: np.ndarray, labels: np.ndarray) -> str:
    """The first 16 hex digits of sha256 over the int64 little-endian bytes of the indices
    sorted ascending, followed by the int64 little-endian bytes of the labels in that order."""
    index = np.asarray(index, dtype=np.int64)
    order = np.argsort(index, kind="stable")
    digest = hashlib.sha256(index[order].astype("<i8").tobytes())
    digest.update(np.asarray(labels, dtype=np.int64)[order].astype("<i8").tobytes())
    return digest.hexdigest()[:16]


def table_of(tree: dict) -> ScoreTable:
    """The table of a scores tree (:func:`imp.scores.read_scores`), rows by ascending index."""
    order = np.argsort(np.asarray(tree["index"]), kind="stable")
    index = np.asarray(tree["index"], dtype=np.int64)[order]
    labels = np.asarray(tree["labels"], dtype=np.int64)[order]
    per_run = np.asarray(tree["per_run"], dtype=np.float64)[:, order]
    meta = {"dataset": _dataset_of(tree), "split": SPLIT, "examples": len(index),
            "index_hash": index_hash(index, labels), "score": str(tree["score"]), "step": str(tree["step"]),
            "runs": int(tree["runs"]), "orientation": str(tree.get("orientation", "high_is_hard")),
            "iterations": int(tree.get("iterations", -1)), "data_fingerprint": str(tree.get("data_fingerprint", ""))}
    return ScoreTable(meta, index, labels, np.asarray(tree["mean"], dtype=np.float64)[order], per_run)


def _dataset_of(tree: dict) -> str:
    """The data set scored: stored since scores had orientations, else from the provenance."""
    if "dataset" in tree:
        return str(tree["dataset"])
    from imp.base.config import DataConfig

    config = json.loads(tree.get("provenance", {}).get("config", "{}"))
    return str(config.get("data", {}).get("dataset", DataConfig().dataset))


def format_of(path: Path, given: str | None = None) -> str:
    """``given``, or the format named by ``path``'s suffix; anything else is refused."""
    name = given or path.suffix.lstrip(".").lower()
    if name not in FORMATS:
        raise UserError(f"unknown format {name!r}; give --format csv, npy or parquet" if given else
                        f"cannot tell the format of {path} from its name; name it .csv, .npy or .parquet")
    return name


def sidecar(path: Path) -> Path:
    """The metadata file of a ``.npy`` export: ``<file>.npy.json`` beside it."""
    return path.with_name(path.name + ".json")


def _pyarrow(doing: str):
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise UserError(f"{doing} needs pyarrow (pip install pyarrow); or use csv or npy") from None
    return pyarrow


# ---------------------------------------------------------------- writing


def export_scores(source: str | Path, fmt: str, to: str | Path | None = None) -> Path:
    """Write the scores file ``source`` as ``fmt`` to ``to`` (default: beside it, same stem)."""
    source = Path(source)
    fmt = format_of(source, fmt)
    path = Path(to) if to else source.with_suffix(f".{fmt}")
    if fmt == "parquet":
        _pyarrow("--format parquet")
    if path.is_dir():
        raise UserError(f"{path} is a folder; give --to a file name")
    for target in (path, sidecar(path)) if fmt == "npy" else (path,):
        if target.exists():
            raise UserError(f"{target} exists; delete it, or give another --to")
    store.check_writable(path.parent, "another --to")
    write_table(table_of(read_scores(source)), path, fmt)
    return path


def write_table(table: ScoreTable, path: Path, fmt: str) -> None:
    """``table`` in ``fmt`` at ``path`` (and its sidecar), each written to a temporary name first."""
    writes = {"csv": _write_csv, "npy": _write_npy, "parquet": _write_parquet}[fmt](table, path)
    temporaries = {target: target.with_name(f".{target.name}.{os.getpid()}.tmp") for target in writes}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for target, write in writes.items():
            write(temporaries[target])
        for target in writes:  # the table last: a table without its sidecar is never left
            os.replace(temporaries[target], target)
    except OSError as error:
        raise store.cannot_write(path, error, "another --to") from None
    finally:
        for temporary in temporaries.values():
            temporary.unlink(missing_ok=True)


# Each _write_<format> returns {final path: function writing that file's bytes to a given path}.


def _write_csv(table: ScoreTable, path: Path) -> dict:
    columns = table.columns()
    lines = [f"# {key}: {value}" for key, value in table.meta.items()] + [",".join(columns)]
    values = [[str(int(v)) for v in columns["index"]], [str(int(v)) for v in columns["label"]]]
    values += [[repr(float(v)) for v in column] for name, column in columns.items() if name not in ("index", "label")]
    lines += [",".join(row) for row in zip(*values)]
    return {path: lambda target: target.write_text("\n".join(lines) + "\n")}


def _write_npy(table: ScoreTable, path: Path) -> dict:
    columns = table.columns()
    array = np.zeros(len(table.index), dtype=[(name, "<i8" if name in ("index", "label") else "<f8")
                                               for name in columns])
    for name, column in columns.items():
        array[name] = column

    def write_array(target: Path) -> None:
        with open(target, "wb") as handle:
            np.save(handle, array, allow_pickle=False)

    meta = json.dumps(table.meta, sort_keys=True, indent=1)
    return {sidecar(path): lambda target: target.write_text(meta + "\n"), path: write_array}


def _write_parquet(table: ScoreTable, path: Path) -> dict:
    pyarrow = _pyarrow("--format parquet")
    arrow = pyarrow.table(table.columns()).replace_schema_metadata(
        {key: str(value) for key, value in table.meta.items()})
    return {path: lambda target: pyarrow.parquet.write_table(arrow, target)}


# ---------------------------------------------------------------- reading


def read_table(path: str | Path, orientation: str | None = None) -> ScoreTable:
    """An exported table in any of :data:`FORMATS` (by suffix), checked to be well formed.
    ``orientation`` stands in for a missing one and must agree with one the file states."""
    path = Path(path)
    fmt = format_of(path)
    if not path.is_file():
        raise UserError(f"{path} not found; `lth scores export` writes one")
    try:
        meta, columns = {"csv": _read_csv, "npy": _read_npy, "parquet": _read_parquet}[fmt](path)
    except (ValueError, OSError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not a scores table ({type(error).__name__}: {str(error)[:120]}); "
                        "give a file written by `lth scores export`") from None
    if orientation is not None:
        stated = meta.setdefault("orientation", orientation)
        if stated != orientation:
            raise UserError(f"{path} says orientation {stated}, not {orientation}; drop --orientation, or "
                            "correct the file's orientation")
    return _checked(path, meta, columns)


def _read_csv(path: Path) -> tuple[dict, dict]:
    lines = path.read_text(encoding="utf-8").splitlines()
    meta = {}
    while lines and lines[0].startswith("#"):
        key, colon, value = lines.pop(0)[1:].partition(":")
        if not colon:
            raise ValueError(f"comment line {key.strip()!r} is not `# key: value`")
        meta[key.strip()] = value.strip()
    if not lines:
        raise ValueError("no header line")
    header = [name.strip() for name in lines[0].split(",")]
    rows = [line.split(",") for line in lines[1:] if line.strip()]
    if any(len(row) != len(header) for row in rows):
        raise ValueError(f"a row has not the header's {len(header)} fields")
    columns = {}
    for position, name in enumerate(header):
        cells = [row[position].strip() for row in rows]
        columns[name] = (np.array([int(cell) for cell in cells], dtype=np.int64) if name in ("index", "label")
                         else np.array([float(cell) for cell in cells], dtype=np.float64))
    return meta, columns


def _read_npy(path: Path) -> tuple[dict, dict]:
    meta_path = sidecar(path)
    if not meta_path.is_file():
        raise ValueError(f"its metadata {meta_path.name} is not beside it")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path.name} is not a JSON object")
    array = np.load(path, allow_pickle=False)
    if array.dtype.names is None or array.ndim != 1:
        raise ValueError("not a one-dimensional structured array")
    return meta, {name: array[name] for name in array.dtype.names}


def _read_parquet(path: Path) -> tuple[dict, dict]:
    pyarrow = _pyarrow(f"reading {path}")
    try:
        table = pyarrow.parquet.read_table(path)
    except pyarrow.ArrowException as error:
        raise ValueError(str(error)) from None
    meta = {key.decode(): value.decode() for key, value in (table.schema.metadata or {}).items()}
    return meta, {name: table.column(name).to_numpy() for name in table.column_names}


def _checked(path: Path, meta: dict, columns: dict) -> ScoreTable:
    """The table of ``meta`` and ``columns`` read from ``path``, or a one-line refusal."""
    def bad(problem: str) -> UserError:
        return UserError(f"{path} is not a well-formed scores table: {problem}; give a file written by "
                         "`lth scores export`")

    missing = [key for key in KEYS if key not in meta]
    if missing:
        raise bad(f"its metadata lacks {', '.join(missing)}"
                  + (" (or give --orientation)" if "orientation" in missing else ""))
    meta = {key: str(meta[key]) for key in (*KEYS, *OPTIONAL_KEYS) if key in meta}
    for key in INTEGER_KEYS:
        if key in meta:
            try:
                meta[key] = int(meta[key])
            except ValueError:
                raise bad(f"{key} = {meta[key]!r} is not an integer") from None
    if meta["score"] not in SCORES:
        raise bad(f"score {meta['score']!r} is none of {', '.join(SCORES)}")
    if meta["orientation"] not in ORIENTATIONS:
        raise bad(f"orientation {meta['orientation']!r} is neither {' nor '.join(ORIENTATIONS)}")
    if meta["runs"] < 1:
        raise bad(f"runs = {meta['runs']} (at least 1)")
    names_wanted = ["index", "label", "score"] + ([f"run_{r}" for r in range(meta["runs"])] if meta["runs"] > 1 else [])
    if list(columns) != names_wanted:
        raise bad(f"its columns are {', '.join(columns) or 'none'}, not {', '.join(names_wanted)}")
    index, labels = (np.asarray(columns[name]) for name in ("index", "label"))
    if not (np.issubdtype(index.dtype, np.integer) and np.issubdtype(labels.dtype, np.integer)):
        raise bad("index and label are not integers")
    values = np.stack([np.asarray(columns[name], dtype=np.float64) for name in names_wanted[2:]])
    if len(index) != meta["examples"]:
        raise bad(f"it has {len(index)} rows but says examples = {meta['examples']}")
    if np.isnan(values).any():
        raise bad(f"{int(np.isnan(values).sum())} score(s) are NaN")
    if len(np.unique(index)) != len(index):
        raise bad("an index appears twice")
    if index_hash(index, labels) != meta["index_hash"]:
        raise bad(f"its rows hash to {index_hash(index, labels)}, not its index_hash {meta['index_hash']}")
    order = np.argsort(index, kind="stable")
    per_run = values[1:] if meta["runs"] > 1 else values[:1]
    return ScoreTable(meta, index.astype(np.int64)[order], labels.astype(np.int64)[order], values[0][order],
                      per_run[:, order])


# ---------------------------------------------------------------- importing


def check_dataset(table: ScoreTable, name: str, path: Path) -> None:
    """Refuse ``table`` (read from ``path``) unless it scores the data set ``name``."""
    if table.meta["dataset"] != name:
        raise UserError(f"{path} scores the data set {table.meta['dataset']!r}, not {name!r}; give --dataset "
                        f"{table.meta['dataset']}")


def check_against(table: ScoreTable, data: Dataset, path: Path) -> None:
    """Refuse ``table`` (read from ``path``) unless it scores exactly ``data``'s training set."""
    meta = table.meta
    if meta["split"] != SPLIT:
        raise UserError(f"{path} scores the {meta['split']!r} split; only training-set scores ({SPLIT!r}) can be "
                        "imported")
    check_dataset(table, data.name, path)
    if meta["examples"] != len(data.train):
        raise UserError(f"{path} scores {meta['examples']} examples but the training set of {data.name} here has "
                        f"{len(data.train)}; --set the [data] options the scores were computed with "
                        "(data.validation, ...)")
    here = index_hash(data.train.index.cpu().numpy(), data.train.y.cpu().numpy())
    if meta["index_hash"] != here:
        raise UserError(f"{path} scores other examples or labels (index_hash {meta['index_hash']}) than "
                        f"the training set of {data.name} here ({here}); --set the [data] options the scores were "
                        "computed with (data.validation, data.split_seed, data.label_noise, data.noise_seed)")
    stored = meta.get("data_fingerprint", "")
    if stored and data.fingerprint and stored != data.fingerprint:
        raise UserError(f"{path} scores other data files than these (fingerprint {stored}, here "
                        f"{data.fingerprint}); point data.root at the files the scores were computed on")


def tree_of(table: ScoreTable, data: Dataset, source: Path) -> dict:
    """The scores tree (as :func:`imp.scores.compute_scores` returns) of ``table`` over
    ``data``'s training split, in the split's order."""
    rows = np.searchsorted(table.index, data.train.index.cpu().numpy())  # row of each position
    meta = table.meta
    return {
        "score": meta["score"], "step": meta["step"], "iterations": int(meta.get("iterations", -1)),
        "runs": meta["runs"], "orientation": meta["orientation"], "dataset": data.name,
        "per_run": table.per_run[:, rows], "mean": table.mean[rows],
        "index": data.train.index.cpu().numpy(), "labels": data.train.y.cpu().numpy(),
        "noisy": data.noisy.cpu().numpy(),
        "input_norm": data.train.x.flatten(1).norm(dim=1).double().cpu().numpy(),
        "data_fingerprint": data.fingerprint, "imported_from": str(source),
    }


def import_path(out: str | Path, table: ScoreTable, source: Path) -> Path:
    """``<out>/scores/imported_<dataset>_<score>_<id>.h5``, ``<id>`` 12 hex digits of sha256
    over the imported file's bytes (and its sidecar's)."""
    digest = hashlib.sha256(source.read_bytes())
    if source.suffix.lower() == ".npy":
        digest.update(sidecar(source).read_bytes())
    score = f"imported_{table.meta['dataset']}_{table.meta['score']}"
    return Path(out) / names.SCORES_DIR / names.scores_file(score, digest.hexdigest()[:12])


def import_scores(source: str | Path, data: Dataset, out: str | Path, config_json: str,
                  orientation: str | None = None) -> Path:
    """Check the exported table ``source`` against ``data`` and write it as a scores file
    under ``out`` (:func:`import_path`); ``orientation`` stands in for a missing one."""
    return import_table(read_table(source, orientation), Path(source), data, out, config_json)


def import_table(table: ScoreTable, source: Path, data: Dataset, out: str | Path, config_json: str) -> Path:
    """:func:`import_scores` of a table already read from ``source``; returns the file written
    (``config_json``, the [data] section, goes into its provenance)."""
    check_against(table, data, source)
    path = import_path(out, table, source)
    if path.exists():
        raise UserError(f"{path} exists (this file was imported before); use it as diet.scores_file or "
                        "subset.scores_file, or delete it to import again")
    store.check_writable(path.parent)
    store.write_h5(path, tree_of(table, data, source), store.provenance(config_json, data.train.device))
    return path

