"""The project's layout rules: scripts import modules, never other scripts; functions fit on a screen."""
import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"pretrain", "eval_linear", "eval_knn", "finetune", "semisup", "export", "scan", "prepare"}
SOURCES = sorted(glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "reproduce", "*.py"))
                 + glob.glob(os.path.join(ROOT, "bench", "*.py")))


def imported_modules(path):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module.split(".")[0]


def test_no_file_imports_a_script():
    offenders = [(os.path.relpath(f, ROOT), m) for f in SOURCES for m in imported_modules(f)
                 if m in SCRIPTS and m != os.path.splitext(os.path.basename(f))[0]]
    assert offenders == []


def test_no_function_over_sixty_lines():
    long = []
    for f in SOURCES:
        for node in ast.walk(ast.parse(open(f).read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append((os.path.relpath(f, ROOT), node.name, node.end_lineno - node.lineno + 1))
    assert long == []


MODULES = sorted(glob.glob(os.path.join(ROOT, "*.py")))


def _functions(path):
    tree = ast.parse(open(path).read())
    return [(node, ast.get_source_segment(open(path).read(), node)) for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_one_training_loop():
    """Exactly one function iterates a training loader (a loop over a loader that sets the lr or steps
    an optimiser): trainer.Trainer's, which pretraining and every classifier protocol call."""
    loops = []
    for path in SOURCES:
        for node, source in _functions(path):
            iterates = any(isinstance(n, ast.For) and "loader" in ast.unparse(n.iter) for n in ast.walk(node))
            if iterates and ("set_lr(" in source or ".backward(" in source or ".step(" in source):
                loops.append((os.path.relpath(path, ROOT), node.name))
    assert loops == [("trainer.py", "_iterations")]


def test_resume_checkpoints_and_signals_have_one_home():
    calls = {"checkpoint.resume_run(": [], "checkpoint.save_run(": [], "cli.GracefulStop(": [],
             "data.start_epoch(": []}
    for path in SOURCES:
        text = open(path).read()
        for call in calls:
            if call in text:
                calls[call].append(os.path.relpath(path, ROOT))
    assert calls == {call: ["trainer.py"] for call in calls}


def test_pretraining_does_not_import_the_evaluation_code():
    assert not set(imported_modules(os.path.join(ROOT, "pretrain.py"))) & {"classifier", "protocols", "engine"}


def test_no_module_does_anything_at_import():
    """Top-level modules hold imports, definitions and constants only (no call at import, no side
    effect such as registering operators); scripts run under `if __name__ == "__main__":`."""
    allowed = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)
    offenders = []
    for path in MODULES:
        for node in ast.parse(open(path).read()).body:
            docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            main_guard = isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
            if not (isinstance(node, allowed) or docstring or main_guard):
                offenders.append((os.path.basename(path), node.lineno))
            if isinstance(node, ast.Assign) and any(isinstance(n, ast.Call) and ast.unparse(n.func).split(".")[0]
                                                    in ("register_torchvision_fallbacks", "compat") for n in
                                                    ast.walk(node)):
                offenders.append((os.path.basename(path), node.lineno))
    assert offenders == []


def test_ci_installs_and_tests_exactly_as_the_readme_says():
    readme, ci = open(os.path.join(ROOT, "README.md")).read(), open(os.path.join(ROOT, ".ci", "run")).read()
    setup = "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt"
    tests = '.venv/bin/pip install -r requirements-test.txt && .venv/bin/python -m pytest -m "slow or not slow"'
    for command in (setup, tests):
        assert command in readme and command in ci, command
