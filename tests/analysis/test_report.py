import re

import pytest

from analysis.figures import FIGURES
from analysis.load import load_frames, levels_frame, load_runs
from analysis.report import compare, write_report
from imp.base.results import run_info
from runs.lth.cli import main


def test_the_report_has_every_section_and_every_figure(results, subset_runs, tmp_path):
    out, ids = results
    measured = ids[:2] + subset_runs
    infos = [run_info(run) for run in load_runs(measured, out)]
    text = write_report(load_frames(measured, out), infos, tmp_path / "report.html").read_text()
    for section in ("Summary per level", "Comparison of rewind points", "Figures", "Not computed", "Provenance"):
        assert f"<h2>{section}</h2>" in text
    images = re.findall(r"<h3>([a-z_]+)</h3><img alt='\1' src='data:image/png;base64,", text)
    assert sorted(images) == sorted(FIGURES)  # every figure renders from a tiny real run
    assert "<p>Everything was computed.</p>" in text
    assert "<h2>Measurements</h2>" in text and "hessian_top_eigenvalue" in text and "Settings of each variant" in text
    assert all(run_id in text for run_id in measured)
    # provenance is a readable table of dotted keys, not escaped JSON; the summary has the spread
    assert "<td>provenance.date</td>" in text and "<td>config.model.widths</td><td>16</td>" in text
    assert "&quot;" not in text and "test_accuracy_std" in text


def test_the_report_notes_what_was_not_computed(results, tmp_path):
    out, ids = results
    plain = ids[-1]
    text = write_report(load_frames([plain], out), [run_info(load_runs([plain], out)[0])],
                        tmp_path / "plain.html").read_text()
    images = re.findall(r"<h3>([a-z_]+)</h3><img", text)
    notes = re.findall(r"<li><b>([a-z_]+)</b>: ", text)
    assert "accuracy_vs_density" in images and "barrier_curves" in notes and "hessian_vs_level" in notes
    assert sorted(images + notes) == sorted(FIGURES)
    assert "Comparison of rewind points" not in text
    # each note says why and what would give the figure its data, without repeating its name
    assert "<li><b>hessian_vs_level</b>: no rows to plot; to draw it, measure the curvature (`lth hessian RUN`)" \
        in text


def test_every_figure_says_how_to_get_its_data():
    from analysis.report import HOW

    assert set(HOW) == set(FIGURES)


def test_plot_writes_the_supported_figures(results, tmp_path, capsys):
    out, ids = results
    assert main(["plot", *ids[:2], "--out", str(out), "--figures", str(tmp_path / "figs"), "--format", "svg"]) == 0
    written = capsys.readouterr().out.split()
    assert written and all(path.endswith(".svg") for path in written)
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(p.split("/")[-1] for p in written)


def test_compare_groups_by_a_config_key(results, capsys):
    out, ids = results
    table = compare(levels_frame(load_runs(ids[:2], out)), "prune.rewind")
    assert list(table.columns) == ["prune.rewind", "level", "n", "density", "mean", "std"]
    assert set(table["n"]) == {2} and len(table) == 2 * 3
    assert main(["compare", *ids[:2], "--out", str(out), "--by", "prune.rewind"]) == 0
    assert capsys.readouterr().out.split("\n")[0].split() == ["prune.rewind", "level", "n", "density", "mean", "std"]
    assert main(["compare", *ids, "--out", str(out), "--by", "prune.rewnd"]) == 2
    assert "unknown key 'prune.rewnd'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no finished levels"):
        compare(levels_frame([]), "prune.rewind")


def test_export_writes_the_frame_as_csv(results, tmp_path, capsys):
    import pandas as pd

    from analysis.load import load_frames

    out, ids = results
    for table in ("levels", "measurements", "barriers"):
        path = tmp_path / f"{table}.csv"
        assert main(["export", *ids[:2], "--out", str(out), "--table", table, "--file", str(path)]) == 0
        written, frame = pd.read_csv(path), load_frames(ids[:2], out)[table]
        assert list(written.columns) == list(frame.columns) and len(written) == len(frame)
        numbers = [c for c in frame.columns if frame[c].dtype.kind == "f"]
        pd.testing.assert_frame_equal(written[numbers], frame[numbers].reset_index(drop=True), check_dtype=False)
    assert "rows x" in capsys.readouterr().out
