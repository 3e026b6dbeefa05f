import re

import pytest

from analysis.figures import FIGURES
from analysis.load import load_frames, levels_frame, load_runs
from analysis.report import compare, write_report
from imp.results import run_info
from runs.cli import main


def test_the_report_has_every_section_and_notes_what_is_missing(results, tmp_path):
    out, ids = results
    infos = [run_info(run) for run in load_runs(ids, out)]
    path = write_report(load_frames(ids, out), infos, tmp_path / "report.html")
    text = path.read_text()
    for section in ("Summary per level", "Comparison of rewind points", "Figures", "Not computed", "Provenance"):
        assert f"<h2>{section}</h2>" in text
    images = re.findall(r"<h3>([a-z_]+)</h3><img alt='\1' src='data:image/png;base64,", text)
    assert "accuracy_vs_density" in images and "barrier_curves" in images
    assert "hessian_vs_level" not in images  # not measured here, so it is listed instead
    assert re.search(r"<li><b>hessian_vs_level</b>: ", text)
    assert all(run_id in text for run_id in ids) and "&quot;git_revision&quot;" in text
    assert set(images) | set(re.findall(r"<li><b>([a-z_]+)</b>", text)) == set(FIGURES)


def test_plot_writes_the_supported_figures(results, tmp_path, capsys):
    out, ids = results
    assert main(["plot", *ids, "--out", str(out), "--to", str(tmp_path / "figs"), "--format", "svg"]) == 0
    written = capsys.readouterr().out.split()
    assert written and all(path.endswith(".svg") for path in written)
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(p.split("/")[-1] for p in written)


def test_compare_groups_by_a_config_key(results, capsys):
    out, ids = results
    table = compare(levels_frame(load_runs(ids, out)), "prune.rewind")
    assert list(table.columns) == ["prune.rewind", "level", "n", "density", "mean", "std"]
    assert set(table["n"]) == {2} and len(table) == 2 * 3
    assert main(["compare", *ids, "--out", str(out), "--by", "prune.rewind"]) == 0
    assert capsys.readouterr().out.split("\n")[0].split() == ["prune.rewind", "level", "n", "density", "mean", "std"]
    assert main(["compare", *ids, "--out", str(out), "--by", "prune.rewnd"]) == 2
    assert "unknown key 'prune.rewnd'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no finished levels"):
        compare(levels_frame([]), "prune.rewind")
