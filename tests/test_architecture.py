"""The layout rules of docs/architecture.md, checked on the source: no import cycle inside nncomp,
no module over 400 lines, no private name imported from another module, kernels pure."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "nncomp"
MAX_LINES = 400


def modules():
    """``{dotted name: path}`` of every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name, path, known):
    """``(module imported, names taken from it)`` for each import of nncomp modules in ``path``, at
    any depth (function-level imports count: they are still dependencies)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("nncomp"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.append((sub, ()) if sub in known else (target, (alias.name,)))
        elif isinstance(node, ast.Import):
            out += [(a.name, ()) for a in node.names if a.name.startswith("nncomp.")]
    return out


def test_no_import_cycle():
    known = modules()
    graph = {name: {t for t, _ in imports(name, path, known) if t in known and t != name}
             for name, path in known.items()}
    # a package's __init__ re-exporting its modules is not a dependency of those modules on it
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"
    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert not cycles, f"import cycles: {cycles}"


def test_modules_stay_small():
    big = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines (split them by family or format): {big}"


def test_no_private_name_crosses_a_module():
    known = modules()
    crossing = []
    for name, path in known.items():
        for target, names in imports(name, path, known):
            crossing += [f"{name} imports {target}.{n}" for n in names
                         if n.startswith("_") and not n.startswith("__") and n not in ("_jit", "_ir")]
    assert not crossing, "private names used across modules (make them package-public):\n" + "\n".join(crossing)


def test_kernels_import_only_numpy_numba_and_each_other():
    allowed = {"numpy", "numba", "llvmlite", "math", "ctypes", "os", "sys", "threading", "types", "platform",
               "functools", "warnings", "__future__"}
    bad = []
    for path in (PACKAGE / "kernels").glob("*.py"):
        # blas.py finds the BLAS library NumPy loaded (threadpoolctl) to call it through CBLAS; _jit.py
        # digests the kernel sources to drop stale Numba caches
        ok = allowed | ({"pathlib", "threadpoolctl"} if path.name == "blas.py" else set()) | (
            {"pathlib", "hashlib"} if path.name == "_jit.py" else set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                bad += [f"{path.name}: {a.name}" for a in node.names if a.name.split(".")[0] not in ok]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                if node.module.split(".")[0] not in ok:
                    bad.append(f"{path.name}: {node.module}")
    assert not bad, bad
