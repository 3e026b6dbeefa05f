"""The import rules of DESIGN.md §2: imp <- landscape <- analysis <- runs."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["imp", "landscape", "analysis", "runs"]
FORBIDDEN = {layer: set(LAYERS[i + 1:]) for i, layer in enumerate(LAYERS)}
# analysis reads results through the store and never imports training code.
FORBIDDEN["analysis"] |= {"imp.train", "imp.trunk", "imp.level", "imp.diet", "imp.pergrad", "imp.data", "imp.models"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def violations(package: str, repo: Path = REPO) -> list[str]:
    found = []
    for path in sorted((repo / package).rglob("*.py")):
        for name in imported_modules(path):
            for banned in FORBIDDEN[package]:
                if name == banned or name.startswith(banned + "."):
                    found.append(f"{path.relative_to(repo)} imports {name}")
    return sorted(found)


@pytest.mark.parametrize("package", LAYERS)
def test_imports_point_one_way(package):
    assert violations(package) == []


def test_the_checker_catches_a_violation(tmp_path):
    for package, source in [("imp", "from landscape import barriers\nimport runs.cli\n"),
                            ("analysis", "from imp.train import train\nfrom imp import store\n")]:
        (tmp_path / package).mkdir()
        (tmp_path / package / "bad.py").write_text(source)
    assert violations("imp", tmp_path) == ["imp/bad.py imports landscape",
                                           "imp/bad.py imports landscape.barriers",
                                           "imp/bad.py imports runs.cli"]
    assert violations("analysis", tmp_path) == ["analysis/bad.py imports imp.train",
                                                "analysis/bad.py imports imp.train.train"]
