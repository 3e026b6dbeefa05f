from runs.lth.tables import format_table, level_table


def row(replicate, level, baseline, accuracy, density):
    return {"replicate": replicate, "level": level, "baseline": baseline,
            "test_accuracy": accuracy, "density": density}


def test_format_table_aligns_right():
    assert format_table(["a", "bb"], [["100", "1"], ["2", "333"]]) == "  a   bb\n100    1\n  2  333"


def test_level_table_averages_replicates_and_shows_baselines():
    rows = [row(0, 0, None, 0.9, 1.0), row(1, 0, None, 0.8, 1.0),
            row(0, 1, None, 0.95, 0.8), row(1, 1, None, 0.85, 0.8), row(0, 1, "random", 0.5, 0.8)]
    lines = level_table(rows).splitlines()
    assert lines[0] == "test accuracy (mean over 2 replicate(s))"
    assert lines[1].split() == ["level", "density", "imp", "random"]
    assert lines[2].split() == ["0", "100.00%", "85.00±7.07%", "-"]
    assert lines[3].split() == ["1", "80.00%", "90.00±7.07%", "50.00%"]
    assert level_table([]) == "(no finished levels yet)"


def test_level_table_shows_measured_barriers():
    rows = [row(0, 0, None, 0.9, 1.0), row(0, 1, None, 0.9, 0.8)]
    rows[0]["barrier_to_next_test_error"] = 0.0125
    lines = level_table(rows).splitlines()
    assert lines[1].split() == ["level", "density", "imp", "barrier", "to", "next"]
    assert lines[2].split()[-1] == "1.25%" and lines[3].split()[-1] == "-"
