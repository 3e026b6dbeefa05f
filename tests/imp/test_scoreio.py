import hashlib
import json
import struct
import sys

import numpy as np
import pytest

from imp.base.config import load_config
from imp.base.duration import Duration
from imp.base.errors import UserError
from imp.data import load_dataset
from imp.diet import choose_kept, choose_subset
from imp.scoreio import export_scores, import_path, import_scores, index_hash, read_table
from imp.scores import ScoreSpec, load_or_compute, read_scores

TINY = ["model.widths=[16]", "data.batch_size=64"]
CONFIG_JSON = json.dumps({"data": {"dataset": "digits"}})


@pytest.fixture(scope="module")
def computed(tmp_path_factory):
    """Digits, and two scores files: forgetting over 2 runs (some +inf), margin over 1."""
    folder = tmp_path_factory.mktemp("scores")
    config = load_config(None, TINY)
    data = load_dataset(config.data, folder)
    forgetting = load_or_compute(config, data, ScoreSpec("forgetting", Duration(epochs=1), runs=2), folder)[1]
    margin = load_or_compute(config, data, ScoreSpec("margin", Duration(iterations=10)), folder)[1]
    return config, data, {"forgetting": forgetting, "margin": margin}


def parquet_or_skip():
    pytest.importorskip("pyarrow", reason="pyarrow is an optional extra: pip install pyarrow")
    return "parquet"


def test_index_hash_is_sha256_of_the_sorted_indices_then_their_labels():
    index, labels = np.array([5, 1, 3]), np.array([2, 0, 9])
    reference = hashlib.sha256(struct.pack("<3q", 1, 3, 5) + struct.pack("<3q", 0, 9, 2)).hexdigest()[:16]
    assert index_hash(index, labels) == reference
    assert index_hash(index, np.array([2, 0, 8])) != reference


@pytest.mark.parametrize("fmt", ["csv", "npy", "parquet"])
@pytest.mark.parametrize("score", ["forgetting", "margin"])
def test_export_then_import_gives_back_the_same_scores(computed, tmp_path, fmt, score):
    if fmt == "parquet":
        parquet_or_skip()
    config, data, files = computed
    table = export_scores(files[score], fmt, tmp_path / f"table.{fmt}")
    imported = import_scores(table, data, tmp_path / "results", CONFIG_JSON)
    assert imported.parent == tmp_path / "results" / "scores" and imported.name.startswith(f"imported_digits_{score}_")
    before, after = read_scores(files[score], data), read_scores(imported, data)
    for key in ("per_run", "mean", "index", "labels", "noisy", "input_norm"):
        np.testing.assert_array_equal(after[key], before[key])  # exactly, +inf included
    for key in ("score", "step", "iterations", "runs", "orientation", "dataset", "data_fingerprint"):
        assert after[key] == before[key]
    assert np.isinf(before["mean"]).any() == (score == "forgetting")
    assert after["runs"] == len(after["per_run"]) == (2 if score == "forgetting" else 1)


def test_the_csv_layout(computed, tmp_path):
    _, data, files = computed
    path = export_scores(files["forgetting"], "csv", tmp_path / "f.csv")
    lines = path.read_text().splitlines()
    tree = read_scores(files["forgetting"])
    meta = dict(line[2:].split(": ", 1) for line in lines[:10])
    assert meta == {"dataset": "digits", "split": "train", "examples": "1437",
                    "index_hash": index_hash(tree["index"], tree["labels"]), "score": "forgetting", "step": "1ep",
                    "runs": "2", "orientation": "high_is_hard", "iterations": "23",
                    "data_fingerprint": data.fingerprint}
    assert lines[10] == "index,label,score,run_0,run_1"
    rows = [line.split(",") for line in lines[11:]]
    assert [int(row[0]) for row in rows] == sorted(tree["index"].tolist())
    first = int(np.flatnonzero(tree["index"] == int(rows[0][0]))[0])
    assert [float(v) for v in rows[0][2:]] == [tree["mean"][first], *tree["per_run"][:, first]]


def test_a_subset_from_an_imported_export_equals_the_subset_from_the_computed_file(computed, tmp_path):
    config, data, files = computed
    imported = import_scores(export_scores(files["margin"], "npy", tmp_path / "m.npy"), data, tmp_path, CONFIG_JSON)
    chosen = []
    for path in (files["margin"], imported):
        subset = load_config(None, [*TINY, "subset.keep=0.3", "subset.rule=hardest", "subset.score=margin",
                                    f"subset.scores_file='{path}'"])
        diet = load_config(None, [*TINY, "diet.pretrain='5it'", "diet.subset=easy", "diet.size=200",
                                  "diet.score=margin", f"diet.scores_file='{path}'"])
        chosen.append((choose_kept(subset, data, tmp_path)["positions"], choose_subset(diet, data, tmp_path)["positions"]))
    for computed_positions, imported_positions in zip(*chosen):
        np.testing.assert_array_equal(imported_positions, computed_positions)
    mean = read_scores(files["margin"])["mean"]
    assert mean[chosen[0][0]].max() <= np.sort(mean)[len(chosen[0][0]) - 1]  # hardest = the lowest margins


# ---------------------------------------------------------------- refusals


def edited(path, tmp_path, old: str, new: str, name: str = "edited.csv"):
    """A copy of the CSV table ``path`` with the first ``old`` replaced by ``new``."""
    out = tmp_path / name
    out.write_text(path.read_text().replace(old, new, 1))
    return out


def test_import_refuses_other_data(computed, tmp_path):
    config, data, files = computed
    table = export_scores(files["margin"], "csv", tmp_path / "m.csv")
    with pytest.raises(UserError, match="scores the data set 'mnist', not 'digits'; give --dataset mnist"):
        import_scores(edited(table, tmp_path, "# dataset: digits", "# dataset: mnist"), data, tmp_path, CONFIG_JSON)
    fewer = load_dataset(load_config(None, [*TINY, "data.validation=100"]).data, tmp_path)
    with pytest.raises(UserError, match="scores 1437 examples but the training set of digits here has 1337"):
        import_scores(table, fewer, tmp_path, CONFIG_JSON)
    noisy = load_dataset(load_config(None, [*TINY, "data.label_noise=0.1"]).data, tmp_path)
    with pytest.raises(UserError, match="other examples or labels .* data.label_noise"):
        import_scores(table, noisy, tmp_path, CONFIG_JSON)
    with pytest.raises(UserError, match="other data files than these"):
        import_scores(edited(table, tmp_path, f"# data_fingerprint: {data.fingerprint}", "# data_fingerprint: 0"),
                      data, tmp_path, CONFIG_JSON)
    assert not (tmp_path / "scores").exists()  # nothing written


def test_import_refuses_malformed_tables(computed, tmp_path):
    _, data, files = computed
    table = export_scores(files["margin"], "csv", tmp_path / "m.csv")
    lines = table.read_text().splitlines()
    first_row = lines[11].split(",")
    cases = {
        "lacks index_hash": edited(table, tmp_path, "# index_hash:", "# hash:", "a.csv"),
        "columns are index, label, value": edited(table, tmp_path, "index,label,score", "index,label,value", "b.csv"),
        "1 score\\(s\\) are NaN": edited(table, tmp_path, lines[11], ",".join([*first_row[:2], "nan"]), "c.csv"),
        "rows hash to": edited(table, tmp_path, lines[11], ",".join([first_row[0], "7", first_row[2]]), "d.csv"),
        "1436 rows but says examples = 1437": edited(table, tmp_path, lines[11] + "\n", "", "e.csv"),
        "score 'cscore' is none of": edited(table, tmp_path, "# score: margin", "# score: cscore", "f.csv"),
        "is not a scores table": edited(table, tmp_path, lines[12], "1,2", "g.csv"),
        "lacks orientation \\(or give --orientation\\)": edited(table, tmp_path, "# orientation: high_is_easy\n", "",
                                                                 "h.csv"),
    }
    for words, path in cases.items():
        with pytest.raises(UserError, match=words):
            import_scores(path, data, tmp_path, CONFIG_JSON)
    npy = export_scores(files["margin"], "npy", tmp_path / "m.npy")
    npy.with_name("m.npy.json").unlink()
    with pytest.raises(UserError, match="its metadata m.npy.json is not beside it"):
        import_scores(npy, data, tmp_path, CONFIG_JSON)
    with pytest.raises(UserError, match="cannot tell the format of .*t.txt"):
        import_scores(tmp_path / "t.txt", data, tmp_path, CONFIG_JSON)
    assert not (tmp_path / "scores").exists()


def test_orientation_stands_in_for_a_missing_one_and_must_agree(computed, tmp_path):
    _, data, files = computed
    table = export_scores(files["margin"], "csv", tmp_path / "m.csv")
    silent = edited(table, tmp_path, "# orientation: high_is_easy\n", "")
    assert read_table(silent, "high_is_easy").meta["orientation"] == "high_is_easy"
    with pytest.raises(UserError, match="says orientation high_is_easy, not high_is_hard; drop --orientation"):
        import_scores(table, data, tmp_path, CONFIG_JSON, orientation="high_is_hard")


def test_nothing_is_overwritten(computed, tmp_path):
    _, data, files = computed
    table = export_scores(files["margin"], "npy", tmp_path / "m.npy")
    for target in (tmp_path / "m.npy", tmp_path / "x.npy"):
        if target.name == "x.npy":
            (tmp_path / "x.npy.json").write_text("{}")  # a sidecar in the way
        with pytest.raises(UserError, match="exists; delete it, or give another --to"):
            export_scores(files["margin"], "npy", target)
    with pytest.raises(UserError, match="unknown format 'xlsx'; give --format csv, npy or parquet"):
        export_scores(files["margin"], "xlsx", tmp_path / "m.xlsx")
    first = import_scores(table, data, tmp_path, CONFIG_JSON)
    assert first == import_path(tmp_path, read_table(table), table)
    stamp = first.stat().st_mtime_ns
    with pytest.raises(UserError, match="exists \\(this file was imported before\\); use it as diet.scores_file"):
        import_scores(table, data, tmp_path, CONFIG_JSON)
    assert first.stat().st_mtime_ns == stamp


def test_parquet_without_pyarrow_is_one_line(computed, tmp_path, monkeypatch):
    _, data, files = computed
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` raises ImportError
    with pytest.raises(UserError, match="--format parquet needs pyarrow \\(pip install pyarrow\\)"):
        export_scores(files["margin"], "parquet", tmp_path / "m.parquet")
    assert not (tmp_path / "m.parquet").exists()
    (tmp_path / "m.parquet").write_bytes(b"PAR1")
    with pytest.raises(UserError, match="m.parquet needs pyarrow \\(pip install pyarrow\\)"):
        import_scores(tmp_path / "m.parquet", data, tmp_path, CONFIG_JSON)
