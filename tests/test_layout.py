"""The shape of the code base (docs/design.md, "Layout"): no sys.path edits, no import cycles,
each folder of the package importing only the folders below it, small files, and every
reference citation ("§") resolving to a heading of docs/reference.md."""
import ast
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("hoiclip_jax", "data_pipeline")
CODE_FOLDERS = PACKAGES + ("configs", "tests", "benchmarks", "tools")
MAX_LINES = 400
# hoiclip_jax's folders, lowest first: a module may import its own folder and those before it.
LAYERS = ("lib", "models", "weights", "train", "eval", "tools")
CITATION = re.compile(r"§(P?\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#+ §(P?\d+(?:\.\d+)*) ", re.M)


def python_files(folders):
    for folder in folders:
        for root, dirs, files in os.walk(os.path.join(REPO, folder)):
            dirs[:] = [d for d in dirs if d not in (".venv", "__pycache__", "fixtures")]
            yield from (os.path.join(root, f) for f in sorted(files) if f.endswith(".py"))


def module_name(path: str) -> str:
    rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
    return rel.removesuffix(".__init__")


def imported_modules(path: str, known: set) -> set:
    """The package modules `path` imports (module level or inside functions)."""
    tree = ast.parse(open(path).read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found.update(n for n in names if n in known)
    return found


def import_graph() -> dict:
    files = {module_name(p): p for p in python_files(PACKAGES)}
    return {m: imported_modules(p, set(files)) - {m} for m, p in files.items()}


def test_no_sys_path_edits():
    offenders = []
    for path in python_files(CODE_FOLDERS):
        if path == os.path.abspath(__file__):
            continue
        for i, line in enumerate(open(path), 1):
            if re.search(r"sys\.path\.(insert|append|extend)|sys\.path\s*[+]?=", line):
                offenders.append(f"{os.path.relpath(path, REPO)}:{i}")
    assert not offenders, offenders


def test_no_import_cycles():
    graph = import_graph()
    state, stack, cycles = {}, [], []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[module] = "done"
    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, cycles


# The training program runs the evaluator every few epochs: it sits above `eval`, whose
# checkpoint restore builds on the train state (`train.state`, `train.optim`).
PROGRAMS = ("hoiclip_jax.train.main", "hoiclip_jax.train.__main__")


def layer(module: str):
    parts = module.split(".")
    if parts[0] != "hoiclip_jax" or len(parts) < 3 or parts[1] not in LAYERS:
        return None  # data_pipeline, the top-level entry-point aliases
    if module in PROGRAMS:
        return len(LAYERS) - 1
    return LAYERS.index(parts[1])


def test_folders_import_only_downward():
    graph = import_graph()
    upward = [f"{m} -> {d}" for m, deps in graph.items() for d in deps
              if layer(m) is not None and layer(d) is not None and layer(d) > layer(m)]
    assert not upward, upward
    # data_pipeline reads data; it never reaches into the model package.
    into_package = [f"{m} -> {d}" for m, deps in graph.items() if m.startswith("data_pipeline")
                    for d in deps if d.startswith("hoiclip_jax")]
    assert not into_package, into_package


def test_models_do_no_file_io():
    offenders = []
    for path in python_files(("hoiclip_jax/models",)):
        text = open(path).read()
        for pattern in (r"\bopen\(", r"np\.load\b", r"os\.path\.(exists|isfile)", r"json\.load"):
            if re.search(pattern, text):
                offenders.append(f"{os.path.relpath(path, REPO)}: {pattern}")
    assert not offenders, offenders


def test_files_are_small():
    long = [f"{os.path.relpath(p, REPO)}: {n}" for p in python_files(PACKAGES)
            if (n := len(open(p).read().splitlines())) > MAX_LINES]
    assert not long, long


def test_every_citation_is_a_heading_of_the_reference():
    path = os.path.join(REPO, "docs", "reference.md")
    headings = set(HEADING.findall(open(path).read()))
    assert len(headings) > 20
    missing = []
    sources = list(python_files(CODE_FOLDERS)) + [os.path.join(REPO, "docs", "design.md"),
                                                    os.path.join(REPO, "README.md")]
    for source in sources:
        for i, line in enumerate(open(source), 1):
            for cited in CITATION.findall(line):
                if cited.rstrip(".") not in headings:
                    missing.append(f"{os.path.relpath(source, REPO)}:{i}: §{cited}")
    assert not missing, missing


@pytest.mark.parametrize("module", ["hoiclip_jax.train", "hoiclip_jax.evaluate",
                                    "hoiclip_jax.predict", "data_pipeline.synthetic"])
def test_entry_points_keep_their_names(module):
    """`python -m` targets: a package with `__main__` or a module with a `__main__` guard."""
    path = os.path.join(REPO, *module.split("."))
    if os.path.isdir(path):
        assert os.path.isfile(os.path.join(path, "__main__.py"))
    else:
        assert '__name__ == "__main__"' in open(path + ".py").read()


def test_makefile_names_only_existing_files():
    """A prerequisite that moved makes `make demo` stop with 'No rule to make target'."""
    text = open(os.path.join(REPO, "Makefile")).read()
    named = set(re.findall(r"(?<![\w$(/.-])((?:[\w-]+/)+[\w-]+\.(?:py|sh|txt))\b", text))
    assert named, "no file paths found in the Makefile"
    missing = sorted(p for p in named if not os.path.exists(os.path.join(REPO, p)))
    assert not missing, missing
