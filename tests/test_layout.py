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
