"""The layout that shows the method: the method files at the top, plumbing in support/ that never imports them,
developer tools in tools/ imported only where a flag needs them, and the paths every run uses pinned."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHOD = ("model", "lora", "garfa", "sensitivity", "evaluate", "train")
ENTRY_POINTS = ("data", "prepare")  # public interfaces: `from data import load_benchmark`, `python prepare.py`
LINE_BUDGET, METHOD_BUDGET = 480, 2500
OVER_BUDGET_ALLOWED = {"tools/bench.py"}


def project_modules() -> dict[str, Path]:
    """Module name -> file, for every Python file of the project outside tests/."""
    files = [*ROOT.glob("*.py"), *ROOT.glob("support/*.py"), *ROOT.glob("tools/*.py")]
    return {".".join(p.relative_to(ROOT).with_suffix("").parts): p for p in files}


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """The project modules `path` imports (anywhere in the file, or only at module level)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # `from support import dist`
    known = project_modules()
    return {n for n in names if n in known and n not in ("support", "tools")}


def test_the_top_level_shows_the_method():
    top = {p.stem for p in ROOT.glob("*.py")}
    assert top == set(METHOD) | set(ENTRY_POINTS), sorted(top)
    assert (ROOT / "calibration_pairs.json").is_file() and (ROOT / "METHOD.md").is_file()


def test_support_never_imports_a_method_file():
    for name, path in project_modules().items():
        if name.startswith("support."):
            found = {m for m in imports(path) if not m.startswith("support.")}
            assert not found, f"{name} imports {sorted(found)}: plumbing must not import the method or tools"


def test_model_imports_nothing_of_the_project():
    assert imports(ROOT / "model.py") == set()


def test_method_files_import_tools_only_where_a_flag_needs_them():
    for name in (*METHOD, *ENTRY_POINTS):
        eager = {m for m in imports(ROOT / f"{name}.py", top_level_only=True) if m.startswith("tools.")}
        assert not eager, f"{name}.py imports {sorted(eager)} at module level; import it where its flag is handled"


def test_no_import_cycle():
    graph = {name: imports(path, top_level_only=True) for name, path in project_modules().items()}

    def visit(node, stack):
        assert node not in stack, f"import cycle: {' -> '.join([*stack, node])}"
        for nxt in graph[node]:
            visit(nxt, [*stack, node])

    for name in graph:
        visit(name, [])


def test_files_stay_within_their_line_budgets():
    counts = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in project_modules().values()}
    over = {f: n for f, n in counts.items() if n > LINE_BUDGET and f not in OVER_BUDGET_ALLOWED}
    assert not over, f"over {LINE_BUDGET} lines: {over}"
    method = sum(counts[f"{m}.py"] for m in METHOD)
    assert method <= METHOD_BUDGET, f"the six method files hold {method} lines (budget {METHOD_BUDGET})"


def test_the_paths_every_run_uses_stay_where_they_were():
    from support import files

    assert files.ROOT == ROOT
    assert files.DEFAULT_MODEL_DIR == ROOT / "checkpoints" / "SmolLM2-135M-Instruct"
    assert files.DATA_DIR == ROOT / "data" and files.WHEEL_DIR == ROOT / "data" / "wheels"
    assert files.RUNS_DIR == ROOT / "runs" and files.CACHE_DIR == ROOT / "runs" / ".cache"
