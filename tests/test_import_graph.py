"""The house rules of `wsss_keras`'s imports: no cycles, layers that point down, hosts that do
not know their plug-ins.

The graph is read from the source with `ast` (nothing is imported), with every import in it:
module level and function-local alike, since a lazy import is still a dependency and a lazy
cycle still ties two modules together. `from package import name` is an edge to the module
`package.name` when there is one, else to `package`.
"""

import ast
import os

import pytest

PACKAGE = "wsss_keras"
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PACKAGE)

# The layers, bottom first: a module may import its own package and any package of a LOWER
# layer, never one of its own layer or above. Read from the tree (issue #25):
# - errors and step_counts import nothing of the package; backend and tf_startup only errors;
#   the package's own `__init__` (its version) nothing.
# - ops, data, backbones, training and recipes are independent of each other and sit on the
#   bottom only: the numerical ops, the datasets, the networks, the training loop's parts and
#   the recipe files.
# - evaluation scores datasets (data); methods build models from backbones, ops and data.
# - pipelines run the methods' stages end to end, over everything below.
# - export (and the graph it exports) packages trained models; it uses pipelines' model loading.
# - commands are the CLI's subcommands over pipelines and export; cli assembles them.
LAYERS = (
    ("errors", "step_counts", ""),
    ("backend", "tf_startup"),
    ("ops", "data", "backbones", "training", "recipes"),
    ("evaluation", "methods"),
    ("pipelines",),
    ("export",),
    ("commands",),
    ("cli",),
)

# Hosts that must not know their plug-ins: {host module: plug-in modules it never imports}.
# The plug-in fills the host's interface (DOEI ToCo's attention hook, SSR WeCLIP's
# `WeCLIPPlugin` and `WeCLIP`'s overridable steps) and is composed with it from above (the
# recipe's `[doei]` table, `pipelines.train.TRAINERS`). `methods.toco` itself does import
# `methods.doei`, lazily, to rebuild a saved DOEI from its config (`ToCo(doei={...})`).
HOSTS = {
    f"{PACKAGE}.pipelines.toco": (f"{PACKAGE}.methods.doei",),
    f"{PACKAGE}.methods.weclip": (f"{PACKAGE}.methods.ssr", f"{PACKAGE}.pipelines.ssr"),
    f"{PACKAGE}.pipelines.weclip": (f"{PACKAGE}.methods.ssr", f"{PACKAGE}.pipelines.ssr"),
}


def module_name(path, root=ROOT):
    relative = os.path.relpath(path, os.path.dirname(root))[: -len(".py")]
    parts = relative.split(os.sep)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def module_files(root=ROOT):
    """{module name: file path} for every module of the package under `root`."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                files[module_name(path, root)] = path
    return files


def imports_of(name, path, modules):
    """{imported module of the package: first line importing it} for the module `name`."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), filename=path)
    package = name if os.path.basename(path) == "__init__.py" else name.rpartition(".")[0]
    found = {}
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for target in targets:
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                # `import a.b.c` names a module; an unknown tail is an attribute of its parent.
                while target not in modules and "." in target:
                    target = target.rpartition(".")[0]
                if target != name:
                    found.setdefault(target, node.lineno)
    return found


def import_graph(root=ROOT):
    """{module: {imported module: line}} of every module of the package under `root`."""
    modules = module_files(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycles(graph):
    """One cycle per knot of the graph (a set of modules that all reach each other), as a list
    of modules from the knot's smallest name round to it; fixing it may reveal another."""
    cycles, index, low, stack, on_stack = [], {}, {}, [], set()

    def connect(node):  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(shortest_cycle(graph, component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return cycles


def shortest_cycle(graph, component):
    """One shortest cycle through the component's first module (a readable witness)."""
    start = min(component)
    paths, seen = [[start]], {start}
    while paths:
        grown = []
        for path in paths:
            for target in sorted(graph.get(path[-1], ())):
                if target == start:
                    return [*path, start]
                if target in component and target not in seen:
                    seen.add(target)
                    grown.append([*path, target])
        paths = grown
    return [start, start]


def layer_of(module):
    """The layer index of a module's top package (`wsss_keras.pipelines.run` -> pipelines)."""
    top = module.split(".")[1] if "." in module else ""
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index, top
    raise AssertionError(f"{module}: its package {top!r} is in no layer of LAYERS; add it there.")


def layer_violations(graph):
    """'a (layer) imports b (layer), line n' for each import of a package of the same or a
    higher layer than the importer's own."""
    found = []
    for source, targets in sorted(graph.items()):
        source_layer, source_top = layer_of(source)
        for target, line in sorted(targets.items()):
            target_layer, target_top = layer_of(target)
            if target_top != source_top and target_layer >= source_layer:
                found.append(f"{source} (layer {source_layer}, {source_top or PACKAGE}) imports {target} "
                             f"(layer {target_layer}, {target_top or PACKAGE}) at line {line}")
    return found


def plugin_violations(graph):
    """'host imports its plug-in plug-in at line n' for each host that imports one."""
    return [
        f"{host} imports its plug-in {plugin} at line {graph[host][plugin]}"
        for host, plugins in sorted(HOSTS.items()) for plugin in plugins if plugin in graph.get(host, {})
    ]


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_the_graph_sees_lazy_and_relative_imports(graph):
    # A function-local import counts (pipelines import their methods inside functions).
    assert "wsss_keras.pipelines.fitting" in graph["wsss_keras.pipelines.amr"]
    assert "wsss_keras.data.coco" in graph["wsss_keras.data"]


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (module -> module it imports):\n" + "\n".join(
        "  " + " -> ".join(cycle) for cycle in cycles
    )


def test_imports_point_down_the_layers(graph):
    violations = layer_violations(graph)
    order = " < ".join("/".join(name or PACKAGE for name in layer) for layer in LAYERS)
    assert not violations, f"imports that do not point down the layers ({order}):\n" + "\n".join(
        "  " + violation for violation in violations
    )


def test_hosts_do_not_import_their_plugins(graph):
    assert set(HOSTS) <= set(graph), "a host of HOSTS is no module of the package any more"
    violations = plugin_violations(graph)
    assert not violations, "\n".join(violations)


def test_trainers_import_only_down_to_the_training_loop(graph):
    # `train` dispatches to the trainers by name (TRAINERS); they share `fitting`, which imports
    # no other pipeline, and never import the dispatchers above them.
    from wsss_keras.pipelines.train import TRAINERS

    pipelines = f"{PACKAGE}.pipelines."
    assert not [name for name in graph[pipelines + "fitting"] if name.startswith(pipelines)]
    dispatchers = {pipelines + "train", pipelines + "run", pipelines + "quickstart"}
    trainers = {entry.partition(":")[0] for entry in TRAINERS.values()}
    upward = [f"{trainer} imports {name}" for trainer in sorted(trainers) for name in graph[trainer] if name in dispatchers]
    assert not upward, "\n".join(upward)


def test_cycle_finder_names_the_cycle():
    cycles = find_cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}})
    assert cycles == [["a", "b", "c", "a"]]
