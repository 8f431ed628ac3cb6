"""Nothing the project loads can run code: no pickle, eval or exec; torch.load only with weights_only=True."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("ostaf", "components", "pipelines", "benchmarks") for p in (ROOT / d).rglob("*.py"))


def findings(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            found += [
                f"import {n}" for n in names if n and n.split(".")[0] in ("pickle", "dill", "cloudpickle", "marshal")
            ]
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if name in ("eval", "exec", "compile", "__import__"):
            found.append(f"{name}()")
        elif name.endswith("torch.load") and keywords.get("weights_only") != "True":
            found.append("torch.load without weights_only=True")
        elif name in ("yaml.load", "yaml.unsafe_load") and "SafeLoader" not in keywords.get("Loader", ""):
            found.append(f"{name} without SafeLoader")
        elif name.endswith(("pd.read_pickle", "np.load")) and keywords.get("allow_pickle") != "False":
            found.append(f"{name} may unpickle")
    return found


def test_the_scanner_catches_each_pattern():
    load = "torch." + "load"  # spelled apart so that no scanner mistakes the sample for a call
    bad = f"import pickle\neval('1')\n{load}(f)\nyaml.load(s)\nnp.load(f)\n"
    assert len(findings(bad)) == 5
    assert findings(f"{load}(f, weights_only=True)\nyaml.safe_load(s)\n") == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_code_execution_from_data(path):
    assert findings(path.read_text()) == []
