"""The package keeps the design's promises: imports point downwards, no prints, a stable API."""
import ast
from pathlib import Path

import pytest

import detr_tutorial as dt

PACKAGE = Path(dt.__file__).resolve().parent

# DESIGN.md section 5: what each part may never import (relative to the package)
# families sit above models/matcher/criterion: the vanilla parts never import a family
FORBIDDEN = {
    "models": ("data", "engine", "train", "viz", "cli", "evaluation", "matcher", "criterion", "checkpoint", "recipes",
               "families"),
    "families": ("data", "engine", "train", "viz", "cli", "evaluation", "checkpoint", "recipes"),
    "matcher": ("models", "families", "data", "engine", "train", "viz", "cli"),
    "criterion": ("models", "families", "data", "engine", "train", "viz", "cli"),
    "validation": ("models", "families", "data", "engine", "train", "viz", "cli", "matcher", "criterion", "config",
                   "nested"),
    "data": ("models", "engine", "train", "viz", "cli", "matcher", "criterion"),
    "engine": ("viz", "cli"),
    "box_ops": ("models", "data", "engine", "train", "viz", "cli", "matcher", "criterion", "config", "nested"),
    "nested": ("models", "data", "engine", "train", "viz", "cli", "matcher", "criterion", "config"),
    "config": ("models", "data", "engine", "train", "viz", "cli", "matcher", "criterion", "nested"),
    "image_io": ("models", "data", "engine", "train", "viz", "cli", "matcher", "criterion", "config", "nested"),
    "weights_io": ("models", "data", "engine", "train", "viz", "cli", "matcher", "criterion", "config", "nested",
                   "checkpoint"),
}


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported_parts(path: Path) -> set[str]:
    """Package parts a module imports (resolving relative imports)."""
    tree = ast.parse(path.read_text())
    rel = path.relative_to(PACKAGE)
    package_parts = list(rel.parts[:-1])
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - (node.level - 1)] if node.level > 1 else package_parts
                target = base + (node.module.split(".") if node.module else [])
                if target:
                    found.add(target[0])
                else:  # "from . import x"
                    found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("detr_tutorial."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("detr_tutorial."):
                    found.add(alias.name.split(".")[1])
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_downwards(path):
    part = _part(path)
    bad = _imported_parts(path) & set(FORBIDDEN.get(part, ()))
    assert not bad, f"{path.relative_to(PACKAGE)} ({part}) imports {sorted(bad)}, against DESIGN.md section 5"


@pytest.mark.parametrize("path", [p for p in _modules() if _part(p) not in ("cli", "__main__")], ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_code_does_not_print(path):
    tree = ast.parse(path.read_text())
    prints = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print"]
    assert not prints, f"print() at lines {prints}: use logging (or tqdm for progress)"


def test_public_api_of_the_design_is_exported():
    for name in (
        "PRESETS", "build_model", "HungarianMatcher", "SetCriterion", "PostProcess",
        "load_official_state_dict", "box_ops", "predict", "NestedTensor",
    ):
        assert hasattr(dt, name), name
    assert {"detr-r50", "detr-r101", "detr-tiny"} <= set(dt.PRESETS)


def test_every_torch_load_goes_through_the_package_weights_loader():
    """``weights_io.read_weights_file`` is the one place that unpickles (weights_only, one-line
    errors); a ``torch.load`` anywhere else would bring back raw EOFErrors or unsafe loading."""
    calls = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                if isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                    calls.append(path.relative_to(PACKAGE).as_posix())
    assert calls == ["weights_io.py"], calls


MAX_FUNCTION_LINES = 80


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_is_longer_than_80_lines(path):
    """A function one can read on one screen: from its ``def`` to its last line, docstring included."""
    long = {f.name: f.end_lineno - f.lineno + 1 for f in _functions(path) if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES}
    assert not long, f"{path.relative_to(PACKAGE)}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_paper_detr_has_the_official_constructor_and_a_short_forward():
    """models/detr.py's DETR reads like the official one: the official arguments (backbone,
    transformer, num_classes, num_queries, aux_loss) plus the position encoding, which the official
    code joins to the backbone; a forward of at most 35 lines whose only branch is the optional
    attention output (auxiliary outputs are ``set_outputs``, as the official ``_set_aux_loss``)."""
    import inspect

    from detr_tutorial.models.detr import DETR

    params = list(inspect.signature(DETR.__init__).parameters)
    assert params == ["self", "backbone", "position_embedding", "transformer", "num_classes", "num_queries", "aux_loss"]
    tree = ast.parse((PACKAGE / "models" / "detr.py").read_text())
    detr = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DETR")
    forward = next(f for f in detr.body if isinstance(f, ast.FunctionDef) and f.name == "forward")
    assert forward.end_lineno - forward.lineno + 1 <= 35
    branches = [n for n in ast.walk(forward) if isinstance(n, (ast.If, ast.IfExp, ast.For, ast.While))]
    assert len(branches) == 1, [ast.unparse(b.test if hasattr(b, "test") else b)[:60] for b in branches]


def test_no_family_option_appears_in_the_vanilla_model_files():
    """The paper's model and transformer know nothing of the families built on them."""
    from detr_tutorial.config import FAMILY_OPTIONS

    options = {name for family in FAMILY_OPTIONS.values() for name in family}
    options |= {"reference_points", "conditional_spatial_query", "query_groups", "fine_features"}
    for name in ("models/detr.py", "models/transformer.py"):
        source = (PACKAGE / name).read_text()
        found = sorted(o for o in options if o in source)
        assert not found, f"{name} names family options {found}"


def test_families_are_registered_with_their_three_builders():
    assert set(dt.FAMILIES) == {"detr", "conditional", "deformable", "rtdetr"}
    from detr_tutorial.config import FAMILIES, FAMILY_OPTIONS

    assert set(FAMILIES) == set(dt.FAMILIES) == set(FAMILY_OPTIONS)
    for name, family in dt.FAMILIES.items():
        # Deformable DETR's and RT-DETR's class heads have no "no object" output: sigmoid (focal) scores only
        cfg = dt.get_config("detr-tiny", family=name, num_classes=3, focal_loss=name in ("deformable", "rtdetr"))
        model = family.build_model(cfg)
        assert model.config.family == name
        assert isinstance(family.build_criterion(cfg), dt.SetCriterion)
        assert isinstance(family.build_postprocess(cfg), dt.PostProcess)
