"""Data flows one way: each module of the package imports only modules of earlier stages."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "dcgan_features"
# Helpers first, then the pipeline's stages in the order data moves through them.
ORDER = ["errors", "config", "runtime", "distributed", "artifacts", "runlock", "data", "models", "checkpoint",
         "augment", "contrastive", "losses", "training_state", "run_folder", "train", "dcgan_code", "features",
         "cache_admin", "fisher", "svm_rows", "svm", "knn", "protocols", "probe", "records", "evaluate", "report",
         "released", "api", "export", "ablations", "analysis", "cli", "__main__", "__init__"]
SUBPACKAGES = ["analysis"]  # a stage made of several modules: they may import each other and earlier stages


def package_imports(path: Path, depth: int = 1) -> set[str]:
    """The package's top-level modules ``path`` imports (relative or absolute), at any depth of the file; ``depth``
    is the relative-import level that names the package (2 inside a subpackage)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        absolute = (node.module or "").startswith("dcgan_features") if isinstance(node, ast.ImportFrom) else False
        if isinstance(node, ast.ImportFrom) and (node.level == depth or absolute):
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


def test_a_subpackage_imports_only_earlier_stages_and_only_the_cli_imports_it():
    for name in SUBPACKAGES:
        for path in (PACKAGE / name).glob("*.py"):
            later = {m for m in package_imports(path, depth=2) if ORDER.index(m) >= ORDER.index(name)}
            assert not later, f"{name}/{path.name} imports {sorted(later)}, which come at or after {name} in {ORDER}"
    assert {p.stem for p in PACKAGE.glob("*.py") if "analysis" in package_imports(p)} == {"cli"}
