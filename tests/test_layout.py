"""The code's shape, measured (issue 28): module and function sizes, no import circle, the
layers' directions, one place each for SSE, errors and exits. Read from the source with
``ast``: nothing is imported or run."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "smackctl"
MAX_MODULE, MAX_FUNCTION, MAX_CREATE_APP = 400, 100, 80


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def test_no_module_over_400_lines() -> None:
    long = {
        name: n
        for name, path in MODULES.items()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE
    }
    assert not long, f"modules over {MAX_MODULE} lines: {long}"


def test_no_function_over_100_lines_and_a_short_create_app() -> None:
    long = {}
    for name, path in MODULES.items():
        for fn in _functions(_tree(path)):
            size = (fn.end_lineno or fn.lineno) - fn.lineno + 1
            if size > MAX_FUNCTION:
                long[f"{name}.{fn.name}"] = size
            if fn.name == "create_app":
                assert size <= MAX_CREATE_APP, f"{name}.create_app is {size} lines"
    assert not long, f"functions over {MAX_FUNCTION} lines: {long}"


def _imports(name: str, path: Path) -> set[str]:
    """The smackctl modules ``name`` imports, at the top or inside functions, but not under
    ``if TYPE_CHECKING:`` (types only)."""
    tree = _tree(path)
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(n) for b in node.body for n in ast.walk(b)}
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("smackctl")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if not base.startswith("smackctl"):
                continue
            for a in node.names:  # `from pkg import module` names a module too
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_no_import_circle() -> None:
    """A module's package ``__init__`` is not counted as importing it back (Python runs a
    package's ``__init__`` first, whichever module of it is imported)."""
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(GRAPH[node]):
            if node.startswith(dep + "."):
                continue  # a module and its own package
            if state.get(dep) == 1:
                circles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for name in GRAPH:
        if name not in state:
            visit(name, [name])
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_the_layers_import_downwards_only() -> None:
    for name, deps in GRAPH.items():
        if name.startswith("smackctl.daemon"):
            assert not any(d.startswith("smackctl.cli") for d in deps), name
        if name.startswith("smackctl.cli"):
            assert not any(d.startswith("smackctl.daemon") for d in deps), name
        if name == "smackctl.wire":
            assert deps == set(), "wire.py is a leaf"
    for name in ("smackctl.daemon.gateway.plan", "smackctl.daemon.planner"):
        assert all(not d.startswith("smackctl.daemon") for d in GRAPH[name]), f"{name} is pure"


def test_sse_is_framed_and_parsed_in_one_place() -> None:
    """Only wire.py writes or reads ``data:`` lines (the runner program hands its
    events to llama_cpp.server, which frames them)."""
    offenders = []
    for name, path in MODULES.items():
        if name == "smackctl.wire":
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
                text = node.value if isinstance(node.value, str) else node.value.decode()
                if text.startswith("data:") or "\ndata:" in text:
                    offenders.append(f"{name}:{node.lineno}")
    assert not offenders, f"SSE framed or parsed outside wire.py: {offenders}"


def test_every_error_is_in_the_tree_and_exits_in_one_place() -> None:
    errors = _tree(MODULES["smackctl.errors"])
    tree_doc = ast.get_docstring(errors) or ""
    defined = {n.name for n in errors.body if isinstance(n, ast.ClassDef)}
    for cls in defined:
        assert cls in tree_doc, f"{cls} is not drawn in errors.py's tree"
    for name, path in MODULES.items():
        if name == "smackctl.errors":
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(b) for b in node.bases}
                assert not bases & defined, f"{name}.{node.name}: errors live in errors.py"
            if isinstance(node, ast.Raise) and node.exc is not None:
                raised = ast.unparse(node.exc)
                if raised.startswith(("typer.Exit", "SystemExit", "sys.exit")):
                    assert name == "smackctl.cli.app", f"{name} exits: {raised}"


REQUEST_PATH = ("smackctl.daemon.api", "smackctl.daemon.gateway", "smackctl.daemon.translate")


def _own_handlers_handed_on(tree: ast.Module) -> Iterator[str]:
    """``Thing(self.handler)`` or ``Thing(on_x=self.handler)`` inside a class whose
    ``handler`` is a coroutine method: an object built with a way to call back into the code
    that builds it (as the proxy once built the gateway and the router with its ``forward``).
    A clock or a notice (``Breaker(name, self.now, self._changed)``) is not a handler."""
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        handlers = {f.name for f in cls.body if isinstance(f, ast.AsyncFunctionDef)}
        for call in (n for n in ast.walk(cls) if isinstance(n, ast.Call)):
            built = ast.unparse(call.func).rsplit(".", 1)[-1]
            if not built[:1].isupper():
                continue
            for arg in [*call.args, *(k.value for k in call.keywords)]:
                if (
                    isinstance(arg, ast.Attribute)
                    and isinstance(arg.value, ast.Name)
                    and arg.value.id == "self"
                    and arg.attr in handlers
                ):
                    yield f"{cls.name}: {ast.unparse(call)[:80]} (line {call.lineno})"


def test_nothing_on_the_request_path_is_built_with_a_callback_into_its_builder() -> None:
    found = [
        f"{name}: {hit}"
        for name, path in MODULES.items()
        if name.startswith(REQUEST_PATH)
        for hit in _own_handlers_handed_on(_tree(path))
    ]
    assert not found, "handlers handed down the request path:\n" + "\n".join(found)


def test_the_callback_check_sees_a_callback() -> None:
    """The check above, on the shape it forbids (so that it cannot pass by seeing nothing)."""
    source = """
class Proxy:
    def __init__(self):
        self.gateway = Gateway(self.forward, on_auto=self.forward)
    async def forward(self, request):
        ...
"""
    assert len(list(_own_handlers_handed_on(ast.parse(source)))) == 2


#: each of these is defined in one module only (issue 28: one piece of code each)
HOMES = {
    "error_body": "smackctl.wire",
    "new_request_id": "smackctl.wire",
    "sse": "smackctl.wire",
    "tokens_of": "smackctl.daemon.usage",
    "tokens_in_stream": "smackctl.daemon.usage",
    "smack_error": "smackctl.daemon.api.common",
}


def test_error_bodies_request_ids_and_token_counts_are_defined_once() -> None:
    """A copy of one of them elsewhere would drift from it (a copy of the token count once
    lacked the guard against a negative or non-numeric usage)."""
    found: dict[str, list[str]] = {}
    for name, path in MODULES.items():
        for fn in _functions(_tree(path)):
            if fn.name in HOMES or fn.name in ("token_counts", "count_tokens"):
                found.setdefault(fn.name, []).append(name)
    for fn_name, home in HOMES.items():
        assert found.get(fn_name) == [home], f"{fn_name} is defined in {found.get(fn_name)}"
    assert "token_counts" not in found and "count_tokens" not in found, found


SECRETS = {"token", "key", "given", "secret", "api_key"}


def _secret_compared_with_eq(tree: ast.Module) -> Iterator[int]:
    """``token == x`` or ``self.key != given``: a comparison that returns as soon as a byte
    differs, which tells a caller timing the answers how much of a key it has right."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare) or not any(
            isinstance(op, ast.Eq | ast.NotEq) for op in node.ops
        ):
            continue
        sides = [node.left, *node.comparators]
        if any(isinstance(s, ast.Constant) for s in sides):
            continue  # against a literal (None, ""): no secret is measured
        names = {s.id if isinstance(s, ast.Name) else s.attr for s in sides
                 if isinstance(s, ast.Name | ast.Attribute)}  # fmt: skip
        if names & SECRETS:
            yield node.lineno


#: comparisons of things named like a secret that are none
NOT_SECRETS = {
    "smackctl.cli.completion": "the completion cache's key (what its names came from)",
    "smackctl.daemon.backends.llama_cpp_python.patches": "a token id against end-of-text",
}


def test_keys_and_tokens_are_compared_in_constant_time() -> None:
    found = [
        f"{name}:{line}"
        for name, path in MODULES.items()
        if name not in NOT_SECRETS
        for line in _secret_compared_with_eq(_tree(path))
    ]
    for name in NOT_SECRETS:  # each still compares what it says, and nothing more
        assert len(list(_secret_compared_with_eq(_tree(MODULES[name])))) == 1, name
    assert not found, f"a key or token compared with == or != (use hmac.compare_digest): {found}"
    assert list(_secret_compared_with_eq(ast.parse("ok = given != self.token"))) == [1]
