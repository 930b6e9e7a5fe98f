"""The house holds its shape: imports run one way, bottom to top, and no two modules import each other.

Reads every module's imports with ``ast`` (function-local ones included: a local import that dodges a cycle is
still a cycle) and checks them against the layers of docs/ARCHITECTURE.md. A failure names the two modules.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Bottom first. A module may import from its own layer (without a cycle) or any layer below. The most specific
# prefix decides a module's layer.
LAYERS = [
    ("base", ["spin_kernels._util", "spin_kernels._version", "spin_kernels.sharing", "spin_kernels.recompute",
              "spin_kernels.argtypes",
              "spin_kernels.checkpoint_io", "spin_kernels.collectives", "spin_kernels.testing"]),
    ("kernels", ["spin_kernels.reference", "spin_kernels.triton", "spin_kernels.cuda", "spin_kernels.cuda_build",
                 "spin_kernels.cuda_emulation", "spin_kernels.perf.cards", "spin_kernels.perf.roofline",
                 "spin_kernels.perf.machine_code", "spin_kernels.perf.sass", "spin_kernels.perf.aot",
                 "spin_kernels.perf.kernels_report"]),
    ("ops", ["spin_kernels.ops"]),
    # the backend switch; and the cost model, which records the ops' launches (spin_kernels.perf.launches)
    ("backends", ["spin_kernels.backends", "spin_kernels.perf"]),
    ("models", ["spin_kernels.fusion", "spin_kernels.models", "spin_kernels.interop"]),
    ("apps", ["spin_kernels.data", "spin_kernels.train", "spin_kernels.analysis", "bench"]),
    ("cli", ["spin_kernels.cli", "spin_kernels.perf_cli"]),
    ("face", ["spin_kernels"]),   # the package's public face: imports the API, nothing imports it
]


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in ("spin_kernels", "bench"):
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def layer_of(module: str) -> int:
    """Index of the layer whose longest prefix matches ``module``."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best is not None, f"{module} is in no layer of tests/test_layers.py"
    return best


def imports(module: str) -> set[str]:
    """The modules of this repository ``module`` imports (a name imported from a package counts as the submodule
    when there is one, else as the package)."""
    path = MODULES[module]
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in MODULES else target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in MODULES and m != module}


GRAPH = {m: imports(m) for m in MODULES}


def test_every_module_has_a_layer():
    for m in MODULES:
        layer_of(m)


def test_no_import_runs_upward():
    upward = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
              for a, targets in GRAPH.items() for b in targets if layer_of(b) > layer_of(a)]
    assert not upward, "imports that run upward:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    # Tarjan's strongly connected components: any component of two or more modules is a cycle
    index, low, on_stack, stack, cycles, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    described = []
    for comp in cycles:
        edges = [f"{a} -> {b}" for a in comp for b in GRAPH[a] if b in comp]
        described.append(", ".join(edges))
    assert not cycles, "import cycles:\n" + "\n".join(described)
