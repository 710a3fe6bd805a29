"""The package's shape: no import circle anywhere in illada_rt (function-local imports included),
and every import goes down the floors below or stays inside its own package.

Floors, lowest first: what a package may use is everything on a lower floor.
"""
import ast
import os

import illada_rt

ROOT = os.path.dirname(illada_rt.__file__)

FLOORS = [
    {"illada_rt.config", "illada_rt.rng", "illada_rt.device"},          # facts: config.json, counters, devices
    {"illada_rt._C"},                                                    # the compiled extension
    {"illada_rt.ops", "illada_rt.reference"},                            # kernels and their twins; the oracle
    {"illada_rt.quant"},                                                 # weight formats
    {"illada_rt.model"},                                                 # the forward pass
    {"illada_rt.loading", "illada_rt.decoding"},                         # checkpoint -> model; the denoising loop
    {"illada_rt.text", "illada_rt.parallel"},                            # tokenizer; tensor-parallel ranks
    {"illada_rt.engine"},                                                # the public Engine
    {"illada_rt.serving"},                                               # shared engine, scheduler, HTTP
    {"illada_rt.integrations"},                                          # other tools (lm-eval) over the engine
    {"illada_rt.cli"},                                                   # the command line
    {"illada_rt", "illada_rt.__main__"},                                 # the package's face
]
FLOOR = {unit: i for i, units in enumerate(FLOORS) for unit in units}


def modules():
    """module name -> path of every .py file under illada_rt/."""
    out = {}
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(dirpath, f)
    out["illada_rt._C"] = None        # the compiled extension: a leaf, imported by ops/extension.py alone
    return out


def imports(name, path, known):
    """The illada_rt modules `name` imports anywhere in its file (function bodies included)."""
    if path is None:
        return set()
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("illada_rt")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("illada_rt"):
                target = node.module
            else:
                continue
            for a in node.names:   # `from pkg import module` depends on the module
                found.add(f"{target}.{a.name}" if f"{target}.{a.name}" in known else target)
    return {m for m in found if m in known and m != name}


def unit(module):
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def graph():
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_unit_has_a_floor():
    assert {unit(m) for m in graph()} <= set(FLOOR), sorted({unit(m) for m in graph()} - set(FLOOR))


def test_only_ops_extension_imports_the_compiled_extension():
    assert [m for m, deps in graph().items() if "illada_rt._C" in deps] == ["illada_rt.ops.extension"]


def test_no_import_goes_up_a_floor():
    upward = sorted(f"{a} -> {b}" for a, deps in graph().items() for b in deps
                    if unit(a) != unit(b) and FLOOR[unit(b)] >= FLOOR[unit(a)])
    assert not upward, upward


def test_no_import_circle():
    g = graph()
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(g[node]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_the_top_level_holds_a_handful_of_modules():
    top = sorted(f for f in os.listdir(ROOT) if f.endswith(".py"))
    assert top == ["__init__.py", "__main__.py", "config.py", "device.py", "engine.py", "rng.py"], top
