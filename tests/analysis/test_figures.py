"""Every standard figure renders from a synthetic frame of the loader's schema under Agg."""

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display in tests

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis import figures  # noqa: E402
from analysis.figures import FIGURES, category_order  # noqa: E402

RUNS = {"run0": "0it", "run1": "2000it"}  # run id -> prune.rewind
LEVELS = range(6)
REPLICATES = (0, 1)


def config(run_id: str) -> dict:
    return {"prune.rewind": RUNS[run_id], "diet.subset": "all", "diet.size": 0,
            "diet.pretrain": "0it", "model.name": "lenet_300_100", "data.dataset": "mnist"}


def make_levels() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for run_id in RUNS:
        for replicate in REPLICATES:
            for level in LEVELS:
                for baseline in ("imp", "reinit") if level else ("imp",):
                    drop = 0.001 * level if baseline == "imp" else 0.004 * level
                    measured = baseline == "imp" and level % 2 == 0
                    sharpness = 20.0 + 3 * level + 4 * replicate + 6 * (run_id == "run1")
                    rows.append({"run_id": run_id, "replicate": replicate, "level": level,
                                 "baseline": baseline, "density": 0.8 ** level,
                                 "test_accuracy": 0.98 - drop + rng.normal(0, 0.001),
                                 "train_accuracy": 0.995, "test_loss": 0.07,
                                 "hessian_top_eigenvalue": sharpness if measured else np.nan,
                                 "predicted_max_prune_fraction": 0.6 - 0.05 * level,
                                 "conservative_max_prune_fraction": 0.1,
                                 "measured_max_prune_fraction": 0.5 - 0.04 * level,
                                 **config(run_id)})
    frame = pd.DataFrame(rows)
    unmeasured = (frame["baseline"] != "imp") | (frame["level"] % 2 == 1)
    frame.loc[unmeasured, [c for c in frame if c.endswith("max_prune_fraction")]] = np.nan
    return frame


def make_measurements() -> pd.DataFrame:
    """The measurements frame: Hessians and prune checks of the even trunk levels; run1's
    Hessian at level 2 also in a second variant (other settings)."""
    levels = make_levels()
    trunk = levels[(levels["baseline"] == "imp") & (levels["level"] % 2 == 0)]
    rows = []
    for _, row in trunk.iterrows():
        base = {key: row[key] for key in ("run_id", "replicate", "level", *config(row["run_id"]))}
        level = row["level"]
        rows.append({**base, "kind": "hessian", "variant": "aaaa0000", "settings": "{}",
                     **{key: row[key] for key in ("hessian_top_eigenvalue", "conservative_max_prune_fraction")},
                     "predicted_limit_random": row["predicted_max_prune_fraction"],
                     "predicted_limit_magnitude": row["predicted_max_prune_fraction"] + 0.05,
                     "quadratic_limit_random": 0.7 - 0.06 * level, "quadratic_limit_magnitude": 0.75 - 0.06 * level,
                     "hessian_negative_mass": 0.01 * level, "hessian_zero_mass": 0.3 + 0.02 * level,
                     "ggn_zero_mass": 0.5})
        rows.append({**base, "kind": "prune_check", "variant": "bbbb0000", "settings": "{}",
                     "measured_max_prune_fraction": row["measured_max_prune_fraction"],
                     **{f"measured_limit_{rule}_{reference}": row["measured_max_prune_fraction"] + shift
                        for rule, reference, shift in (("magnitude", "dense", 0), ("magnitude", "level", 0.1),
                                                       ("random", "dense", -0.1), ("random", "level", 0.0))},
                     "measured_limit_random_dense_censored": -1.0 if level >= 4 else 0.0,
                     "measured_limit_magnitude_level_censored": 1.0 if level == 0 else 0.0})
        if row["run_id"] == "run1" and row["level"] == 2:
            rows.append({**base, "kind": "hessian", "variant": "cccc0000", "settings": "{}",
                         "hessian_top_eigenvalue": 2 * row["hessian_top_eigenvalue"],
                         "predicted_limit_random": 0.1, "conservative_max_prune_fraction": 0.05})
    return pd.DataFrame(rows)


def make_metrics() -> pd.DataFrame:
    rows = [{"run_id": run_id, "replicate": replicate, "level": level, "baseline": baseline, "step": step,
             "train_loss": 2.3 / (1 + step / 50) + 0.01 * level, "test_accuracy": 0.1 + 0.85 * step / 200}
            for run_id in RUNS for replicate in REPLICATES for level in (0, 1, 2) for baseline in ("imp", "reinit")
            for step in (0, 50, 100, 200)]
    return pd.DataFrame(rows)


def make_directions() -> pd.DataFrame:
    rows = [{"run_id": "run1", "replicate": replicate, "level": level, "variant": "bbbb0000", "rule": rule,
             "fraction": fraction, "curvature": (1 + level) * fraction * (2 if rule == "random" else 1),
             "loss_rise": fraction ** 2, "quadratic_rise": fraction ** 2 / (10 + level)}
            for replicate in REPLICATES for level in (0, 2, 4) for rule in ("magnitude", "random")
            for fraction in (0.1, 0.5, 0.9)]
    return pd.DataFrame(rows)


def make_curves() -> pd.DataFrame:
    rows = []
    for replicate in REPLICATES:
        for level in range(5):
            for alpha in np.linspace(0, 1, 5):
                for split in ("train", "test"):
                    for metric, base in (("error", 0.02), ("loss", 0.07)):
                        bump = (0.002 + 0.001 * level + 0.0005 * replicate) * np.sin(np.pi * alpha)
                        rows.append({"run_id": "run0", "replicate": replicate, "kind": "successive",
                                     "level": level, "label": f"{level}->{level + 1}",
                                     "alpha": alpha, "split": split, "metric": metric,
                                     "value": base + bump, **config("run0")})
    return pd.DataFrame(rows)


def make_barriers() -> pd.DataFrame:
    rows = []
    for run_id, scale in zip(RUNS, (1.0, 0.3)):
        for replicate in REPLICATES:
            for level in range(5):
                kinds = [("successive", f"{level}->{level + 1}")]
                kinds += [("instability", "0_1"), ("instability", "0_2")] if level % 2 == 0 else []
                for kind, label in kinds:
                    value = scale * (0.002 if kind == "successive" else 0.004 - 0.0005 * level)
                    value += 0.0003 * replicate
                    for split in ("train", "test"):
                        for metric in ("error", "loss"):
                            rows.append({"run_id": run_id, "replicate": replicate, "kind": kind,
                                         "level": level, "label": label, "split": split,
                                         "metric": metric, "interpolated": value,
                                         "mean": value * 1.1, "density": 0.8 ** level,
                                         "direction": None, "size": np.nan, "alignment": "raw",
                                         **config(run_id)})
            rows.append({**rows[-1], "kind": "perturb", "label": "gaussian 0.5",
                         "direction": "gaussian", "size": 0.5})
    aligned = [{**row, "alignment": way, "interpolated": row["interpolated"] * shrink, "mean": row["mean"] * shrink}
               for row in rows if row["run_id"] == next(iter(RUNS)) and row["level"] < 3
               for way, shrink in (("weights", 0.5), ("weights+repair", 0.2))]
    return pd.DataFrame(rows + aligned)


def make_per_example(examples: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    frames = [pd.DataFrame({"run_id": "run0", "replicate": replicate, "level": level,
                            "midpoint_barrier": rng.normal(0.02 - 0.01 * level / 4, 0.03, examples),
                            "tau": 0.0, **config("run0")})
              for level in (0, 4) for replicate in REPLICATES]
    return pd.concat(frames, ignore_index=True)


def make_scores(examples: int = 2000) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    noisy = rng.random(examples) < 0.1
    norm = rng.gamma(9, 1, examples)
    el2n = np.clip(rng.beta(0.5, 4, examples) + 0.8 * noisy, 0, 1.41)
    forgetting = np.where(rng.random(examples) < 0.9, 0.0, rng.integers(1, 6, examples) * 1.0)
    forgetting[noisy & (rng.random(examples) < 0.5)] = np.inf
    grand = el2n * norm / 5 + rng.normal(0, 0.01, examples)
    values = {("el2n", "2ep"): el2n, ("grand", "2ep"): grand, ("forgetting", "10ep"): forgetting}
    frames = [pd.DataFrame({"score": score, "step": step, "name": f"{score}@{step}",
                            "position": np.arange(examples), "value": value, "noisy": noisy,
                            "input_norm": norm, "label": rng.integers(0, 10, examples)})
              for (score, step), value in values.items()]
    return pd.concat(frames, ignore_index=True)


def make_subset_levels() -> pd.DataFrame:
    """Dense networks trained on pruned data sets (Paul et al. 2021, Figs. 1 and 2): EL2N
    and random selections at three kept fractions plus the whole set, and windows."""
    rows = []
    def run(run_id, keep, rule, offset=0.0, noise=0.0, accuracy=0.95):
        for replicate in REPLICATES:
            rows.append({"run_id": run_id, "replicate": replicate, "level": 0, "baseline": "imp", "density": 1.0,
                         "test_accuracy": accuracy + 0.002 * replicate, "subset.keep": keep, "subset.rule": rule,
                         "subset.score": "el2n", "subset.score_step": "2ep", "subset.offset": offset,
                         "data.label_noise": noise})
    run("all", 1.0, "hardest", accuracy=0.96)
    for keep in (0.9, 0.7, 0.5):
        run(f"hard{keep}", keep, "hardest", accuracy=0.96 - 0.02 * (1 - keep))
        run(f"random{keep}", keep, "random", accuracy=0.96 - 0.06 * (1 - keep))
    for noise in (0.0, 0.1):
        for offset in (0.0, 0.1, 0.3):  # a window at offset 0 is stored as the hardest examples
            run(f"window{noise}{offset}", 0.4, "window" if offset else "hardest", offset, noise,
                accuracy=0.9 + offset / 10 - noise)
    return pd.DataFrame(rows)


def make_group_measurements() -> pd.DataFrame:
    """Group barriers of siblings spawned at four steps (Paul et al. 2021, Fig. 4)."""
    return pd.DataFrame([{"run_id": f"k{step}", "replicate": replicate, "level": 0, "kind": "groups",
                          "variant": "dddd0000", "settings": "{}", "spawn_step": float(step),
                          "group_barrier_low_train_error": 0.02 / (1 + step),
                          "group_barrier_high_train_error": 0.2 / (1 + step / 100) + 0.01 * replicate}
                         for step in (0, 10, 100, 1000) for replicate in REPLICATES])


def make_ntk() -> pd.DataFrame:
    """Kernel velocities falling over training, faster on high-score examples, two runs
    (clean and noisy labels)."""
    return pd.DataFrame([{"run_id": run, "replicate": replicate, "level": 0, "variant": "eeee0000", "group": group,
                          "step": step, "velocity": speed / step, "distance": speed, "data.label_noise": noise}
                         for run, noise in (("clean", 0.0), ("noisy", 0.1)) for replicate in REPLICATES
                         for group, speed in (("low", 0.5), ("high", 2.0), ("random", 1.0))
                         for step in (10, 20, 40, 80)])


FRAMES = {"levels": make_levels, "subset_levels": make_subset_levels, "group_measurements": make_group_measurements,
          "ntk": make_ntk, "measurements": make_measurements, "curves": make_curves, "barriers": make_barriers,
          "per_example": make_per_example, "scores": make_scores, "directions": make_directions,
          "metrics": make_metrics}
# figure -> (x label fragment, log x axis)
EXPECTED = {"accuracy_vs_density": ("density", True), "rewind_comparison": ("density", True),
            "hessian_vs_level": ("level", False), "prune_limit": ("level", False),
            "spectrum_masses": ("level", False), "directional_curvature": ("fraction", False),
            "training_accuracy": ("step", False), "training_loss": ("step", False),
            "loss_rise_ratio": ("fraction", False),
            "barrier_curves": ("α", False), "barrier_vs_level": ("density", True), "aligned_barriers": ("pair", False),
            "instability_vs": ("rewind step", False), "per_example_histogram": ("B_i", False),
            "score_histogram": ("EL2N", False), "score_scatter": ("el2n@2ep", False),
            "subset_pruning_curve": ("pruned", False), "subset_window": ("window start", False),
            "group_barrier_vs_spawn": ("spawn step", False), "ntk_velocity": ("step", False)}
# figures whose synthetic data is another frame of the same schema
SOURCE = {"subset_pruning_curve": "subset_levels", "subset_window": "subset_levels",
          "group_barrier_vs_spawn": "group_measurements"}


@pytest.fixture(scope="module")
def frames() -> dict:
    return {name: make() for name, make in FRAMES.items()}


def test_every_figure_is_listed():
    assert set(FIGURES) == set(EXPECTED)
    assert all(frame in FRAMES for _, frame in FIGURES.values())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_figure_renders(name, frames, tmp_path):
    function, frame = FIGURES[name]
    fig = function(frames[SOURCE.get(name, frame)])
    try:
        assert isinstance(fig, Figure)
        ax = fig.axes[0]
        label, log_x = EXPECTED[name]
        assert label in ax.get_xlabel() and ax.get_ylabel()
        assert ax.get_title(loc="left") or fig.get_suptitle()
        assert ax.lines or ax.collections or ax.patches
        assert (ax.get_xscale() == "log") == log_x
        assert ax.get_legend() is not None or fig.legends
        fig.savefig(tmp_path / f"{name}.png", dpi=60)
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    finally:
        plt.close(fig)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_empty_frame_raises(name, frames):
    function, frame = FIGURES[name]
    with pytest.raises(ValueError, match=name):
        function(frames[SOURCE.get(name, frame)].iloc[:0])
    with pytest.raises(ValueError, match=name):
        function(pd.DataFrame({"unrelated": [1.0]}))


def test_draws_into_a_given_axes(frames):
    fig, ax = plt.subplots()
    try:
        assert figures.accuracy_vs_density(frames["levels"], ax=ax) is fig
        legend = [t.get_text() for t in ax.get_legend().texts]
        assert "matching (±0.5 points)" in legend and legend.index("imp") < legend.index("reinit")
        # the dense mean is the level-0 trunk mean, in %
        levels = frames["levels"]
        dense = 100 * levels.query("level == 0 and baseline == 'imp'")["test_accuracy"].mean()
        assert any(np.allclose(line.get_ydata(), dense) for line in ax.lines)
    finally:
        plt.close(fig)


def test_aligned_barriers_stay_out_of_the_raw_figures_and_sit_beside_them_in_their_own(frames):
    barriers = frames["barriers"]
    raw_only = barriers[barriers["alignment"] == "raw"]
    for name in ("barrier_vs_level", "instability_vs"):
        drawn = []
        for frame in (barriers, raw_only):
            fig = FIGURES[name][0](frame)
            drawn.append(sorted(np.round(np.concatenate([line.get_ydata() for line in fig.axes[0].lines]), 9)))
            plt.close(fig)
        assert drawn[0] == drawn[1], name
    fig = figures.aligned_barriers(barriers)
    try:
        legend = [t.get_text() for t in fig.axes[0].get_legend().texts]
        assert legend == ["raw", "weights", "weights+repair"]
        pairs = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        # only the pairs measured more than one way: run0's levels 0-2
        assert set(pairs) == {"levels 0→1", "levels 1→2", "levels 2→3", "siblings, level 0", "siblings, level 2"}
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match="aligned_barriers: no pair measured both raw and aligned"):
        figures.aligned_barriers(raw_only)


def test_missing_measurements_raise(frames):
    measurements = frames["measurements"].assign(hessian_top_eigenvalue=np.nan)
    with pytest.raises(ValueError, match="Hessian"):
        figures.hessian_vs_level(measurements)
    with pytest.raises(ValueError, match="prune_limit"):
        figures.prune_limit(frames["measurements"].drop(
            columns=[c for c in frames["measurements"] if "_limit_" in c]))
    with pytest.raises(ValueError, match="one panel each"):
        figures.score_histogram(frames["scores"], ax=plt.subplots()[1])
    plt.close("all")


def test_levels_at_density_0_are_named_not_dropped_silently(frames):
    levels = frames["levels"].copy()
    levels.loc[levels["level"] == 5, "density"] = 0.0  # every prunable weight gone at level 5
    fig = figures.accuracy_vs_density(levels)
    try:
        assert "level 5 at density 0 not shown on the log axis" in fig.axes[0].get_title(loc="left")
        assert fig.axes[0].get_xscale() == "log"
    finally:
        plt.close(fig)
    fig = figures.accuracy_vs_density(frames["levels"])
    assert "density 0" not in fig.axes[0].get_title(loc="left")
    plt.close(fig)


@pytest.mark.parametrize("lowest", [1.0, 0.95, 0.7, 0.3, 0.1, 0.035, 0.0005])
def test_density_tick_labels_never_overlap(lowest):
    """Axes narrowed by a wide legend (two runs, three baselines), short and long ranges:
    at least two tick labels, and no two of them touch."""
    rows = [{"run_id": run, "replicate": 0, "level": level, "baseline": baseline, "density": density,
             "test_accuracy": 0.9, "prune.rewind": run}
            for run in ("a", "a-much-longer-rewind") for baseline in ("imp", "reinit", "random")
            for level, density in enumerate(np.geomspace(1.0, lowest, 8))]
    fig = figures.accuracy_vs_density(pd.DataFrame(rows))
    try:
        fig.canvas.draw()
        ax = fig.axes[0]
        low, high = sorted(ax.get_xlim())
        labels = [t for t in ax.get_xticklabels() if t.get_text() and low <= t.get_position()[0] <= high]
        assert len(labels) >= (1 if lowest == 1.0 else 2)  # dense networks alone: one density, one tick
        boxes = sorted((t.get_window_extent() for t in labels), key=lambda box: box.x0)
        assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:])), [t.get_text() for t in labels]
    finally:
        plt.close(fig)


def test_rewind_comparison_needs_two_rewind_points(frames):
    levels = frames["levels"]
    one = levels[levels["prune.rewind"] == levels["prune.rewind"].iloc[0]]
    with pytest.raises(ValueError, match="every run has the same rewind step k"):
        figures.rewind_comparison(one)


def test_prune_limit_draws_censored_limits_as_such(frames):
    fig = figures.prune_limit(frames["measurements"])
    try:
        legend = [t.get_text() for t in fig.axes[0].get_legend().texts]
        assert "limit below this (none matched)" in legend and "limit at least this (all matched)" in legend
        below = next(c for c in fig.axes[0].collections if c.get_label() == "limit below this (none matched)")
        rows = frames["measurements"].query("measured_limit_random_dense_censored == -1")
        assert len(below.get_offsets()) == len(rows)  # one open triangle per censored level and replicate
    finally:
        plt.close(fig)


def test_score_scatter_reports_the_rank_correlation(frames):
    scores = frames["scores"]
    fig = figures.score_scatter(scores, "el2n@2ep", "forgetting@10ep")
    title = fig.axes[0].get_legend().get_title().get_text()
    assert title.startswith("Spearman ρ = ") and float(title.split("= ")[1]) > 0
    assert "∞" in fig.axes[0].get_ylabel()
    fig = figures.score_scatter(scores, "input_norm", "el2n@2ep")
    assert fig.axes[0].get_xlabel() == "input_norm"
    with pytest.raises(ValueError, match="no score named 'el2n'"):
        figures.score_scatter(scores, "el2n", "grand@2ep")
    plt.close("all")


def test_per_example_legend_gives_the_fraction_below_tau(frames):
    per_example = frames["per_example"]
    fig = figures.per_example_histogram(per_example)
    legend = [t.get_text() for t in fig.axes[0].get_legend().texts]
    below = per_example[per_example["level"] == 0]["midpoint_barrier"].le(0).mean()
    assert f"L0: {100 * below:.0f}%" in legend and "$\\tau$ = 0" in legend
    plt.close(fig)


def test_category_order():
    steps = pd.Series(["2000it", "0it", "500it", "0it"])
    assert category_order(steps) == ["0it", "500it", "2000it"]
    assert category_order(pd.Series(["2ep", "1ep", "0it"])) == ["0it", "1ep", "2ep"]
    assert category_order(pd.Series(["1ep", "600it"]), iterations_per_epoch=469) == ["1ep", "600it"]
    with pytest.raises(ValueError, match="iterations_per_epoch"):
        category_order(pd.Series(["1ep", "600it"]))
    assert category_order(pd.Series([6000, 600, None])) == [600, 6000]
    assert category_order(pd.Series(["hard", "easy", "random"])) == ["easy", "hard", "random"]


def test_variants_of_a_measurement_are_drawn_apart(frames):
    """run1 holds two Hessian variants: each is a line of its own, never their mean."""
    fig = figures.hessian_vs_level(frames["measurements"])
    try:
        legend = [t.get_text() for t in fig.axes[0].get_legend().texts]
        # runs are named by their config difference (run1 rewinds to 2000it), variants by id
        assert "rewind=2000it [aaaa0000]" in legend and "rewind=2000it [cccc0000]" in legend
        assert "rewind=0it" in legend
        sharpness = frames["measurements"].query("run_id == 'run1' and level == 2 and kind == 'hessian'")
        ys = np.concatenate([line.get_ydata() for line in fig.axes[0].lines])
        for variant in ("aaaa0000", "cccc0000"):
            assert np.any(np.isclose(ys, sharpness[sharpness["variant"] == variant]["hessian_top_eigenvalue"].mean()))
        assert not np.any(np.isclose(ys, sharpness["hessian_top_eigenvalue"].mean()))
    finally:
        plt.close(fig)


def test_runs_are_named_by_their_config_difference_and_keep_their_own_dense_line(frames):
    from analysis.style import run_names

    levels = frames["levels"]
    assert set(run_names(levels)) == {"rewind=0it", "rewind=2000it"}
    same = levels.assign(**{"prune.rewind": "0it"})
    assert set(run_names(same)) == {"run0", "run1"}  # nothing tells them apart but their ids
    fig = figures.accuracy_vs_density(levels)
    try:
        legend = [t.get_text() for t in fig.axes[0].get_legend().texts]
        for run_id, name in (("run0", "rewind=0it"), ("run1", "rewind=2000it")):
            dense = 100 * levels.query("run_id == @run_id and level == 0 and baseline == 'imp'")["test_accuracy"].mean()
            assert f"dense {name} ({dense:.2f}%)" in legend
    finally:
        plt.close(fig)


def test_two_replicates_draw_their_range_and_say_so():
    from analysis.style import band, replicates_note

    two = pd.DataFrame({"run_id": "a", "replicate": [0, 1, 0, 1], "level": [0, 0, 1, 1], "baseline": "imp",
                        "density": [1.0, 1.0, 0.8, 0.8], "test_accuracy": [0.90, 0.94, 0.91, 0.97]})
    assert band(two) == {"errorbar": ("pi", 100)} and "n = 2 replicates, band = range" in replicates_note(two)
    three = pd.concat([two, two.assign(replicate=2)])
    assert band(three)["errorbar"] == ("ci", 95) and "band" not in replicates_note(three)
    fig = figures.accuracy_vs_density(two)
    try:
        (polygon,) = [c for c in fig.axes[0].collections if len(c.get_paths())]
        ys = polygon.get_paths()[0].vertices[:, 1]
        assert ys.min() == pytest.approx(90.0) and ys.max() == pytest.approx(97.0)  # the min-max range
        assert "band = range" in fig.axes[0].get_title(loc="left")
    finally:
        plt.close(fig)


def test_the_subset_curve_starts_every_method_at_the_whole_data_set(frames):
    levels = frames["subset_levels"]
    fig = figures.subset_pruning_curve(levels[~levels["run_id"].str.startswith("window")])
    try:
        ax = fig.axes[0]
        legend = [t.get_text() for t in ax.get_legend().texts]
        assert legend == ["el2n@2ep hardest", "random"]  # random last; windows belong to the other figure
        whole = 100 * levels.query("run_id == 'all'")["test_accuracy"].mean()
        for line in ax.lines[:2]:
            assert list(line.get_xdata()) == pytest.approx([0, 10, 30, 50])
            assert line.get_ydata()[0] == pytest.approx(whole)
    finally:
        plt.close(fig)
    fig = figures.subset_window(levels)
    try:
        legend = [t.get_text() for t in fig.axes[0].get_legend().texts]
        assert legend == ["0% noise, keep 40%, el2n", "10% noise, keep 40%, el2n"]
        assert list(fig.axes[0].lines[0].get_xdata()) == pytest.approx([0, 10, 30])
    finally:
        plt.close(fig)
    # runs that differ in another [subset] setting are lines of their own, never pooled
    cut = levels[levels["run_id"].isin(["all", "hard0.9", "hard0.5", "random0.5"])].copy()
    cut["subset.ccs_hard_cut"] = 0.0
    cut.loc[cut["run_id"].isin(["hard0.9", "hard0.5"]), "subset.rule"] = "ccs"
    cut.loc[cut["run_id"] == "hard0.5", "subset.ccs_hard_cut"] = 0.1
    fig = figures.subset_pruning_curve(cut)
    try:
        legend = [t.get_text() for t in fig.axes[0].get_legend().texts]
        assert legend == ["el2n@2ep ccs, ccs_hard_cut=0.0", "el2n@2ep ccs, ccs_hard_cut=0.1", "random"]
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match="two or more values of subset.keep"):
        figures.subset_pruning_curve(levels[levels["subset.keep"] == 0.7])


def test_rewind_points_in_epochs_and_iterations_are_ordered_by_the_runs_own_epochs():
    """Run ids write whole epochs as "Nep" (imp.base.config.canonical), so a sweep over
    rewind points mixes "1ep" and "500it": the rows' iterations per epoch order them."""
    from analysis.report import compare

    rows = [{"run_id": rewind, "replicate": 0, "level": level, "baseline": "imp", "density": 0.8 ** level,
             "test_accuracy": 0.9, "prune.rewind": rewind, "iterations_per_epoch": 469}
            for rewind in ("1ep", "500it", "200it") for level in (0, 1)]
    levels = pd.DataFrame(rows)
    assert compare(levels, "prune.rewind")["prune.rewind"].tolist() == ["200it"] * 2 + ["1ep"] * 2 + ["500it"] * 2
    fig = figures.rewind_comparison(levels)
    try:
        assert [t.get_text() for t in fig.axes[0].get_legend().texts] == ["200it", "1ep", "500it"]
    finally:
        plt.close(fig)


def test_many_runs_keep_the_axes_readable():
    """Twelve runs whose configs differ in many keys: named by id (names by config difference
    would be long), and their dense lines share one legend entry."""
    rows = [{"run_id": f"run{i:02d}", "replicate": 0, "level": level, "baseline": "imp", "density": 0.8 ** level,
             "test_accuracy": 0.9 + 0.001 * i, "subset.keep": 0.5 + 0.01 * i, "subset.rule": "window",
             "subset.offset": 0.01 * i, "data.label_noise": 0.1 * (i % 2), "train.lr": 0.1 + 0.01 * i}
            for i in range(12) for level in range(3)]
    fig = figures.accuracy_vs_density(pd.DataFrame(rows))
    try:
        legend = [t.get_text() for t in fig.axes[0].get_legend().texts]
        assert "run00" in legend and legend.count("each run's dense network") == 1
        assert not [label for label in legend if label.startswith("dense ")]
        fig.canvas.draw()
        assert fig.axes[0].get_window_extent().width > 100  # the axes are not squeezed away
    finally:
        plt.close(fig)
