"""The import rules of DESIGN.md §2, as the code has them:

    imp foundation  <-  imp engine  <-  landscape  <-  runs
                    <-  analysis (reads results; no training code, no landscape)  <-  runs

The foundation, ``imp/base`` (configs, durations, errors, seeds, runtime, names, the store, the trained
record and the results reader) imports no engine module; ``imp`` imports none of the
packages above it; ``landscape`` and ``analysis`` do not import each other.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOUNDATION = "imp.base"  # the package of the foundation's modules
ENGINE_ONLY = {"imp.train", "imp.trunk", "imp.level", "imp.diet", "imp.pergrad", "imp.data", "imp.models", "imp.pai",
               "imp.batched", "imp.pruning", "imp.scores", "imp.scoreio", "imp.subsets", "imp.datasets", "imp.legacy",
               "imp.legacy_patterns"}
FORBIDDEN = {
    "imp": {"landscape", "analysis", "runs"},
    "landscape": {"analysis", "runs"},
    "analysis": {"landscape", "runs"} | ENGINE_ONLY,
    "runs": set(),
}
PACKAGES = list(FORBIDDEN)


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _banned(name: str, banned: set[str]) -> bool:
    return any(name == b or name.startswith(b + ".") for b in banned)


def violations(package: str, repo: Path = REPO) -> list[str]:
    found = []
    for path in sorted((repo / package).rglob("*.py")):
        module = ".".join(path.relative_to(repo).with_suffix("").parts)
        banned = set(FORBIDDEN[package])
        if module == FOUNDATION or module.startswith(FOUNDATION + "."):  # it imports nothing of the engine
            banned |= ENGINE_ONLY
        for name in imported_modules(path):
            if _banned(name, banned):
                found.append(f"{path.relative_to(repo)} imports {name}")
    return sorted(found)


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_one_way(package):
    assert violations(package) == []


def test_the_engine_list_names_every_engine_module():
    engine = {f"imp.{path.stem}" for path in (REPO / "imp").glob("*.py") if path.stem != "__init__"}
    assert engine == ENGINE_ONLY  # a new engine module is listed here, or moved into imp/base


def test_the_checker_catches_a_violation(tmp_path):
    for package, name, source in [("imp", "bad", "from landscape import barriers\nimport runs.lth.cli\n"),
                                  ("imp/base", "store", "from imp.train import train\n"),
                                  ("analysis", "bad", "from imp.train import train\nfrom imp import store\n"
                                                      "import landscape.lmc\n")]:
        (tmp_path / package).mkdir(parents=True, exist_ok=True)
        (tmp_path / package / f"{name}.py").write_text(source)
    assert violations("imp", tmp_path) == ["imp/bad.py imports landscape",
                                           "imp/bad.py imports landscape.barriers",
                                           "imp/bad.py imports runs.lth.cli",
                                           "imp/base/store.py imports imp.train",
                                           "imp/base/store.py imports imp.train.train"]
    assert violations("analysis", tmp_path) == ["analysis/bad.py imports imp.train",
                                                "analysis/bad.py imports imp.train.train",
                                                "analysis/bad.py imports landscape.lmc"]
