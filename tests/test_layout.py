"""Data flows one way: each module of the package imports only modules of earlier stages."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "dcgan_features"
# Helpers first, then the pipeline's stages in the order data moves through them.
ORDER = ["errors", "config", "runtime", "artifacts", "data", "models", "checkpoint", "augment", "losses", "train",
         "dcgan_code", "features", "svm", "protocols", "probe", "results", "evaluate", "ablations", "cli", "__main__",
         "__init__"]


def package_imports(path: Path) -> set[str]:
    """The package modules ``path`` imports (relative or absolute), at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.level == 1 or (node.module or "").startswith("dcgan_features")):
            module = (node.module or "").removeprefix("dcgan_features").lstrip(".")
            found.update([module.split(".")[0]] if module else [alias.name for alias in node.names])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("dcgan_features."))
    return found


def test_every_module_has_a_place_in_the_order():
    assert {p.stem for p in PACKAGE.glob("*.py")} <= set(ORDER)


def test_no_module_imports_a_later_stage():
    for path in PACKAGE.glob("*.py"):
        later = {m for m in package_imports(path) if ORDER.index(m) >= ORDER.index(path.stem)}
        assert not later, f"{path.name} imports {sorted(later)}, which come at or after it in {ORDER}"
