"""Every file under runs/ loads: experiment configs parse, scripts import."""

import importlib
from pathlib import Path

import pytest

import landscape.registry  # noqa: F401 (registers the measurements' [landscape] keys, as `lth` does)
from imp.base.config import load_config, run_id
from runs.lth.sweep import load_sweep

RUNS = Path(__file__).resolve().parents[2] / "runs"


@pytest.mark.parametrize("path", sorted(RUNS.rglob("*.toml")), ids=lambda p: p.name)
def test_experiment_files_parse(path):
    if "[sweep]" in path.read_text():
        assert all(len(run_id(config)) == 12 for config in load_sweep(path).configs)
    else:
        assert len(run_id(load_config(path))) == 12


@pytest.mark.parametrize("path", sorted(RUNS.rglob("*.py")), ids=lambda p: str(p.relative_to(RUNS)))
def test_scripts_import(path):
    module = ".".join(path.relative_to(RUNS.parent).with_suffix("").parts)
    importlib.import_module(module.removesuffix(".__init__"))


def test_there_is_a_demo():
    assert (RUNS / "demo_digits.toml").is_file()
