"""The second, independent mutation campaign (issue 22; tests/MUTATION.md, "Second campaign").

Its own mutator (Python's ``ast``, not mutmut's libcst visitor), its own operators (none of them
mutmut's: see OPERATORS), its own seeded sample, its own record of which tests reach which
function, and no trampolines: a mutant is the function's own code object swapped in
(``function.__code__``) inside a child forked from one warm pytest session, so the code under
test is the project's tree itself.

    python .ci/mutation2.py [--seed 2 [--seed N ...]] [--sample 600] [--children 2] [--budget 10]
                            [--out mutants/second.json] [--rerun mutants/second.json]

prints each survivor (its diff) and the totals per module, and exits 1 when a survivor is not
listed in tests/MUTATION.md's second-campaign equivalents. Files and tests: pyproject.toml's
[tool.mutmut] only_mutate and pytest_add_cli_args_test_selection (the same scope and suite as
the first campaign; ANYCNN_TEST_BACKENDS=numpy,strict and one thread, as in tox -e mutation),
and its do_not_mutate_patterns (the performance-only arguments: no expression that starts on
such a line is mutated, as in mutmut), and mutmut's markers: a line with ``# pragma: no mutate``,
a function whose ``def`` line says ``# pragma: no mutate block``.

A mutant's id is ``module:qualname:operator:k``: the k-th point of that operator in the
function (k from 0), which moves only when the function itself changes, not when code above it
does. The sample is the ``--sample`` mutants whose ids hash lowest with the seed (sha256 of
``seed:id``): a mutant is drawn or not whatever the rest of the code is, so a seed's sample
changes only where the code did.

Development aids (a campaign's result uses neither): ``--rerun FILE`` tests again only the
survivors and "no tests" of an earlier run's JSON (those still in the code), or the ids listed
in a text file (one a line); MUTATION_TESTS
narrows the suite, as for .ci/mutation.py.
"""

from __future__ import annotations

import argparse
import ast
import copy
import difflib
import fnmatch
import hashlib
import importlib
import json
import math
import os
import re
import select
import signal
import sys
import time
import tomllib
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SWAPS = {
    "min": "max",
    "max": "min",
    "minimum": "maximum",
    "maximum": "minimum",
    "amin": "amax",
    "amax": "amin",
    "any": "all",
    "all": "any",
    "floor": "ceil",
    "ceil": "floor",
    "zeros": "ones",
    "ones": "zeros",
    "zeros_like": "ones_like",
    "ones_like": "zeros_like",
}
ARITH = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
FLIP = {ast.Lt: ast.Gt, ast.Gt: ast.Lt, ast.LtE: ast.GtE, ast.GtE: ast.LtE}
AUG = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}
# What each operator does; mutmut does none of these (it swaps + and -, < and <=, adds 1 to
# numbers, drops `not`, swaps and/or, assigns None, replaces call arguments by None).
OPERATORS = {
    "stmt-del": "an expression statement or assignment becomes `pass`",
    "if-true": "the test of an `if` or conditional expression becomes True",
    "if-false": "the test of an `if`, `while` or conditional expression becomes False",
    "cmp-flip": "`<` and `>`, `<=` and `>=` swap (the direction, not the boundary)",
    "int-dec": "an integer constant n becomes n - 1",
    "float-half": "a float constant x becomes x / 2 (0.0 becomes 1.0)",
    "keep-left": "`a op b` becomes `a` (arithmetic operators)",
    "keep-right": "`a op b` becomes `b` (arithmetic operators)",
    "neg-drop": "`-a` becomes `a`",
    "arg-swap": "the first two positional arguments of a call swap",
    "slice-lower": "`a[i:j]` becomes `a[:j]`",
    "slice-upper": "`a[i:j]` becomes `a[i:]`",
    "name-swap": "min/max, minimum/maximum, any/all, floor/ceil, zeros/ones swap",
    "return-none": "`return x` becomes `return None`",
    "aug-flip": "`+=` and `-=`, `*=` and `/=` swap",
}


class Mutator(ast.NodeTransformer):
    """Numbers the mutation points of one function body in a fixed walk order; with ``target``,
    applies the point of that number. ``raise`` statements, docstrings, annotations, decorators
    and default values are left alone (as in the first campaign: messages are not pinned)."""

    def __init__(self, target: int | None = None, skip_lines: frozenset[int] = frozenset()) -> None:
        self.target = target
        self.skip_lines = skip_lines
        self.points: list[tuple[str, int, int]] = []

    def visit(self, node):
        # do_not_mutate_patterns: an expression that starts on such a line is left whole
        if isinstance(node, ast.expr) and getattr(node, "lineno", None) in self.skip_lines:
            return node
        return super().visit(node)

    def _point(self, node, op, make):
        index = len(self.points)
        self.points.append((op, getattr(node, "lineno", 0), getattr(node, "col_offset", 0)))
        if index == self.target:
            return make()
        return None

    def _first(self, node, options):
        for op, make in options:
            new = self._point(node, op, make)
            if new is not None:
                return new
        return node

    def visit_Raise(self, node):
        return node

    def visit_FunctionDef(self, node):
        body = node.body
        start = 1 if body and _is_docstring(body[0]) else 0
        node.body = body[:start] + [self.visit(stmt) for stmt in body[start:]]
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        node.body = [self.visit(stmt) for stmt in node.body]
        return node

    def visit_Lambda(self, node):
        node.body = self.visit(node.body)
        return node

    def _statement(self, node):
        node = self.generic_visit(node)
        return self._first(node, [("stmt-del", lambda: ast.Pass())])

    def visit_Expr(self, node):
        if isinstance(node.value, ast.Constant):
            return node
        return self._statement(node)

    def visit_Assign(self, node):
        return self._statement(node)

    def visit_AnnAssign(self, node):
        if node.value is None:
            return node
        node.value = self.visit(node.value)
        return self._first(node, [("stmt-del", lambda: ast.Pass())])

    def visit_AugAssign(self, node):
        node.value = self.visit(node.value)
        options = [("stmt-del", lambda: ast.Pass())]
        if type(node.op) in AUG:
            flipped = AUG[type(node.op)]()
            options.append(("aug-flip", lambda: ast.AugAssign(node.target, flipped, node.value)))
        return self._first(node, options)

    def visit_If(self, node):
        node = self.generic_visit(node)
        if getattr(node.test, "lineno", None) in self.skip_lines:
            return node
        for op, value in (("if-true", True), ("if-false", False)):
            new = self._point(node.test, op, lambda value=value: ast.Constant(value))
            if new is not None:
                node.test = new
        return node

    def visit_IfExp(self, node):
        return self.visit_If(node)

    def visit_While(self, node):
        node = self.generic_visit(node)
        if getattr(node.test, "lineno", None) in self.skip_lines:
            return node
        new = self._point(node.test, "if-false", lambda: ast.Constant(False))
        if new is not None:
            node.test = new
        return node

    def visit_Compare(self, node):
        node = self.generic_visit(node)
        if len(node.ops) == 1 and type(node.ops[0]) in FLIP:
            flipped = FLIP[type(node.ops[0])]()
            return self._first(
                node,
                [("cmp-flip", lambda: ast.Compare(node.left, [flipped], node.comparators))],
            )
        return node

    def visit_Constant(self, node):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            return node
        if isinstance(value, int):
            return self._first(node, [("int-dec", lambda: ast.Constant(value - 1))])
        return self._first(
            node, [("float-half", lambda: ast.Constant(value / 2 if value else 1.0))]
        )

    def visit_BinOp(self, node):
        node = self.generic_visit(node)
        if isinstance(node.op, ARITH):
            return self._first(
                node, [("keep-left", lambda: node.left), ("keep-right", lambda: node.right)]
            )
        return node

    def visit_UnaryOp(self, node):
        node = self.generic_visit(node)
        if isinstance(node.op, ast.USub) and not isinstance(node.operand, ast.Constant):
            return self._first(node, [("neg-drop", lambda: node.operand)])
        return node

    def visit_Call(self, node):
        node = self.generic_visit(node)
        args = node.args
        if (
            len(args) >= 2
            and not any(isinstance(arg, ast.Starred) for arg in args[:2])
            and ast.dump(args[0]) != ast.dump(args[1])
        ):
            swapped = [args[1], args[0], *args[2:]]
            return self._first(
                node, [("arg-swap", lambda: ast.Call(node.func, swapped, node.keywords))]
            )
        return node

    def visit_Slice(self, node):
        node = self.generic_visit(node)
        options = []
        if node.lower is not None:
            options.append(("slice-lower", lambda: ast.Slice(None, node.upper, node.step)))
        if node.upper is not None:
            options.append(("slice-upper", lambda: ast.Slice(node.lower, None, node.step)))
        return self._first(node, options)

    def visit_Name(self, node):
        if node.id in SWAPS and isinstance(node.ctx, ast.Load):
            return self._first(node, [("name-swap", lambda: ast.Name(SWAPS[node.id], node.ctx))])
        return node

    def visit_Attribute(self, node):
        node = self.generic_visit(node)
        if node.attr in SWAPS and isinstance(node.ctx, ast.Load):
            return self._first(
                node, [("name-swap", lambda: ast.Attribute(node.value, SWAPS[node.attr], node.ctx))]
            )
        return node

    def visit_Return(self, node):
        node = self.generic_visit(node)
        if node.value is None or (
            isinstance(node.value, ast.Constant) and node.value.value is None
        ):
            return node
        return self._first(node, [("return-none", lambda: ast.Return(ast.Constant(None)))])

    # annotations and decorators are not mutated
    def visit_arguments(self, node):
        return node

    def visit_arg(self, node):
        return node


def _is_docstring(stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)


class Function:
    """A mutable function of the scope: a module-level function or a method of a module-level
    class, by its qualified name and the line of its first decorator (or `def`)."""

    def __init__(self, module, path, qualname, node, tree, skip_lines=frozenset()):
        self.module, self.path, self.qualname = module, path, qualname
        self.node, self.tree, self.skip_lines = node, tree, skip_lines
        self.firstline = min([node.lineno] + [d.lineno for d in node.decorator_list])
        self.key = f"{module}:{qualname}:{self.firstline}"
        self.points = _points(node, skip_lines)
        seen: dict[str, int] = {}
        self.ids = []
        for op, _, _ in self.points:
            self.ids.append(f"{module}:{qualname}:{op}:{seen.get(op, 0)}")
            seen[op] = seen.get(op, 0) + 1

    def mutated_code(self, index: int) -> types.CodeType:
        tree = copy.deepcopy(self.tree)
        node = _find(tree, self.qualname, self.node.lineno)
        mutator = Mutator(index, self.skip_lines)
        mutator.visit_FunctionDef(node)
        ast.fix_missing_locations(tree)
        return _code_of(compile(tree, str(self.path), "exec"), self.qualname, self.firstline)

    def instrumented_code(self) -> types.CodeType:
        tree = copy.deepcopy(self.tree)
        node = _find(tree, self.qualname, self.node.lineno)
        start = 1 if node.body and _is_docstring(node.body[0]) else 0
        hit = ast.parse(f"__anycnn_mutation_hit__({self.key!r})").body[0]
        node.body.insert(start, hit)
        ast.fix_missing_locations(tree)
        return _code_of(compile(tree, str(self.path), "exec"), self.qualname, self.firstline)

    def source(self, index: int | None) -> str:
        node = copy.deepcopy(self.node)
        if index is not None:
            Mutator(index, self.skip_lines).visit_FunctionDef(node)
            ast.fix_missing_locations(node)
        return ast.unparse(node)


def _points(node, skip_lines=frozenset()) -> list[tuple[str, int, int]]:
    mutator = Mutator(skip_lines=skip_lines)
    mutator.visit_FunctionDef(copy.deepcopy(node))
    return mutator.points


def _find(tree, qualname, lineno):
    for node, name in _functions(tree):
        if name == qualname and node.lineno == lineno:
            return node
    raise LookupError(qualname)


def _functions(tree):
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node, node.name
        elif isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield sub, f"{node.name}.{sub.name}"


def _code_of(code, qualname, firstline):
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            if const.co_qualname == qualname and const.co_firstlineno == firstline:
                return const
            found = _code_of(const, qualname, firstline) if "." in qualname else None
            if found is not None:
                return found
    return None


def _resolve(module, qualname, firstline):
    """The function object whose code the mutant replaces, or None (decorated by something
    that is not a plain wrapper, e.g. Numba's dispatcher or a cache)."""
    owner, _, name = qualname.rpartition(".")
    namespace = vars(module)
    if owner:
        cls = namespace.get(owner)
        if not isinstance(cls, type):
            return None
        namespace = vars(cls)
    raw = namespace.get(name)
    candidates = []
    if isinstance(raw, staticmethod | classmethod):
        candidates = [raw.__func__]
    elif isinstance(raw, property):
        candidates = [raw.fget, raw.fset, raw.fdel]
    elif isinstance(raw, types.FunctionType):
        candidates = [raw]
        while hasattr(candidates[-1], "__wrapped__"):
            candidates.append(candidates[-1].__wrapped__)
    for function in candidates:
        if (
            isinstance(function, types.FunctionType)
            and function.__code__.co_qualname == qualname
            and function.__code__.co_firstlineno == firstline
        ):
            return function
    return None


def scope_files() -> list[tuple[str, Path]]:
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    files = []
    for path in sorted(ROOT.glob("anycnn/**/*.py")) + sorted(ROOT.glob("backends/**/*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if any(fnmatch.fnmatch(relative, pattern) for pattern in settings["only_mutate"]):
            module = relative.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
            files.append((module.removeprefix("backends."), path))
    return files


def selection_args() -> list[str]:
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    selection = settings["pytest_add_cli_args_test_selection"]
    if os.environ.get("MUTATION_TESTS"):  # a development aid, as in .ci/mutation.py
        import shlex

        selection = shlex.split(os.environ["MUTATION_TESTS"])
    return selection + settings.get("pytest_add_cli_args", [])


def skipped_lines(source: str) -> frozenset[int]:
    """The lines (from 1) that [tool.mutmut] do_not_mutate_patterns match in ``source``, and
    those marked with mutmut's ``# pragma: no mutate``."""
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    patterns = [re.compile(p) for p in settings.get("do_not_mutate_patterns", [])]
    patterns.append(re.compile(r"# pragma: no mutate(?! block| start| end)"))
    return frozenset(
        number
        for number, line in enumerate(source.splitlines(), 1)
        if any(p.search(line) for p in patterns)
    )


def left_alone(node, source: str) -> bool:
    """A function whose ``def`` line says ``# pragma: no mutate block`` (mutmut's marker of a
    function it does not mutate: in this project, choices among paths that compute the same)."""
    return "# pragma: no mutate block" in source.splitlines()[node.lineno - 1]


def drawn(population: list[tuple[Function, int]], seed: int, count: int) -> list:
    """The ``count`` mutants whose ids hash lowest with ``seed``: each mutant's place in the
    draw depends on its id and the seed only (see the module's docstring)."""

    def rank(pair):
        function, index = pair
        return hashlib.sha256(f"{seed}:{function.ids[index]}".encode()).digest()

    return sorted(population, key=rank)[:count]


def equivalents() -> set[str]:
    text = (ROOT / "tests" / "MUTATION.md").read_text(encoding="utf-8")
    marker = "Second campaign equivalents:"
    section = text.split(marker, 1)[1].split("\n## ", 1)[0] if marker in text else ""
    return {line.split("`")[1] for line in section.splitlines() if line.startswith("- `")}


class Campaign:
    def __init__(self, options) -> None:
        self.options = options
        self.failed = False

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.failed = True

    def _run(self, items, keep_session, common=None):
        self.failed = False
        for index, item in enumerate(items):
            if index + 1 < len(items):
                nextitem = items[index + 1]
            else:
                nextitem = items[0] if keep_session else None
            item.ihook.pytest_runtest_protocol(item=item, nextitem=nextitem)
            if self.failed:
                return item.nodeid
        if keep_session:

            class Upto:
                def listchain(self):
                    return common

            items[0].session._setupstate.teardown_exact(Upto())
        return None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session):
        if session.testsfailed:
            return None
        options = self.options
        began = time.monotonic()
        # 1. the population of mutants and the seeded sample
        functions, skipped = [], []
        for module_name, path in scope_files():
            module = importlib.import_module(module_name)
            source = path.read_text(encoding="utf-8")
            tree, skip = ast.parse(source), skipped_lines(source)
            for node, qualname in _functions(tree):
                if left_alone(node, source):
                    continue
                function = Function(module_name, path, qualname, node, tree, skip)
                target = _resolve(module, qualname, function.firstline)
                if target is None:
                    skipped.append((function.key, len(function.points)))
                    continue
                function.target = target
                functions.append(function)
        population = [(f, i) for f in functions for i in range(len(f.points))]
        # several seeds (and a rerun) share one recording of the tests, the costly part; each
        # is reported on its own
        draws: dict = {}
        union = {}
        if options.rerun:
            text = Path(options.rerun).read_text()
            if options.rerun.endswith(".json"):
                earlier = json.loads(text)["results"]
                wanted = {e["id"] for e in earlier if e["status"] in ("survived", "no tests")}
            else:  # one id a line
                wanted = {line.split()[0] for line in text.splitlines() if line.strip()}
            pairs = [(f, i) for f, i in population if f.ids[i] in wanted]
            draws["rerun"] = {f.ids[i] for f, i in pairs}
            union.update({f.ids[i]: (f, i) for f, i in pairs})
        for seed in options.seeds or []:
            pairs = drawn(population, seed, options.sample)
            draws[seed] = {f.ids[i] for f, i in pairs}
            union.update({f.ids[i]: (f, i) for f, i in pairs})
        sample = list(union.values())
        sample.sort(key=lambda pair: (pair[0].key, pair[1]))
        print(
            f"\n{len(population)} mutants in {len(functions)} functions "
            f"({sum(n for _, n in skipped)} more in {len(skipped)} decorated functions left "
            f"alone: {', '.join(key for key, _ in skipped)}); seeds {', '.join(map(str, draws))}: "
            f"{len(sample)} drawn"
        )
        # 2. which tests reach each sampled function: its code swapped for one that records
        targets = {f.key: f for f, _ in sample}
        reached: dict[str, set[str]] = {key: set() for key in targets}
        current: list[str] = []

        def hit(key):
            if current:
                reached[key].add(current[0])

        originals = {}
        for key, function in targets.items():
            vars(sys.modules[function.target.__module__])["__anycnn_mutation_hit__"] = hit
            originals[key] = function.target.__code__
            function.target.__code__ = function.instrumented_code()
        durations: dict[str, float] = {}

        class Recorder:
            def pytest_runtest_logstart(self, nodeid, location):
                current[:] = [nodeid]
                durations[nodeid] = 0.0

            def pytest_runtest_makereport(self, item, call):
                if call.when == "call":
                    durations[item.nodeid] += call.duration

        items = list(session.items)
        by_id = {item.nodeid: item for item in items}
        chains = [item.listchain() for item in items]
        common = []
        for nodes in zip(*chains, strict=False):
            if any(node is not nodes[0] for node in nodes):
                break
            common.append(nodes[0])
        recorder = Recorder()
        session.config.pluginmanager.register(recorder)
        failed = self._run(items, keep_session=True, common=common)
        session.config.pluginmanager.unregister(recorder)
        for key, function in targets.items():
            function.target.__code__ = originals[key]
        stats_s = time.monotonic() - began
        if failed:
            print(f"the unmutated suite failed at {failed}")
            session.shouldfail = "unmutated suite failed"
            return True
        print(f"recorded which tests reach each function in {stats_s:.0f} s")
        # 3. the mutants, each in a child forked from this session
        results = []
        queue = list(sample)
        running: dict[int, tuple] = {}
        import gc

        gc.freeze()
        while queue or running:
            while queue and len(running) < options.children:
                function, index = queue.pop(0)
                tests = sorted(reached[function.key], key=lambda name: durations[name])
                chosen, total = [], 0.0
                for name in tests:
                    if chosen and total + durations[name] > options.budget:
                        break
                    chosen.append(name)
                    total += durations[name]
                entry = {
                    "id": function.ids[index],
                    "line": function.points[index][1],
                    "module": function.module,
                    "function": function,
                    "index": index,
                    "tests": len(chosen),
                }
                if not chosen:
                    entry["status"] = "no tests"
                    results.append(entry)
                    continue
                code = function.mutated_code(index)
                if code is None or code.co_freevars != function.target.__code__.co_freevars:
                    # e.g. the only `super()` of a method deleted: no code swap can run it
                    entry["status"] = "not applicable"
                    results.append(entry)
                    continue
                pid = os.fork()
                if pid == 0:
                    status = 35
                    try:
                        devnull = os.open(os.devnull, os.O_WRONLY)
                        os.dup2(devnull, 1)
                        os.dup2(devnull, 2)
                        function.target.__code__ = code
                        status = 1 if self._run([by_id[n] for n in chosen], False) else 0
                    finally:
                        os._exit(status)
                deadline = time.monotonic() + (total + 2.0) * 4
                running[pid] = (entry, deadline, time.monotonic())
            if not running:
                continue
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                now = time.monotonic()
                for child, (entry, deadline, _) in running.items():
                    if now > deadline and "killed_for_time" not in entry:
                        entry["killed_for_time"] = True
                        os.kill(child, signal.SIGKILL)
                select.select([], [], [], 0.01)
                continue
            entry, _, started = running.pop(pid)
            code = os.waitstatus_to_exitcode(wait_status)
            entry["seconds"] = round(time.monotonic() - started, 3)
            if entry.pop("killed_for_time", False):
                entry["status"] = "timeout"
            elif code == 0:
                entry["status"] = "survived"
            elif code == 1:
                entry["status"] = "killed"
            elif code < 0:
                entry["status"] = "crashed"  # a signal: the suite would fail too
            else:
                entry["status"] = "error"
            results.append(entry)
        gc.unfreeze()
        wall = time.monotonic() - began
        self.unexplained = 0
        for seed, ids in draws.items():
            out = Path(options.out)
            if len(draws) > 1:
                out = out.with_name(f"{out.stem}-seed{seed}{out.suffix}")
            mine = [e for e in results if e["id"] in ids]
            self.report(mine, seed, out, len(population), wall, stats_s)
        return True

    def report(self, results, seed, out, population, wall, stats_s):
        listed = equivalents()
        rows: dict[str, dict[str, int]] = {}
        unexplained = []
        for entry in sorted(results, key=lambda e: e["id"]):
            status = entry["status"]
            if status in ("survived", "no tests") and entry["id"] in listed:
                status = "equivalent"
            row = rows.setdefault(entry["module"], {})
            row[status] = row.get(status, 0) + 1
            if status in ("survived", "no tests", "error"):
                unexplained.append(entry)
                function = entry["function"]
                before = function.source(None).splitlines()
                after = function.source(entry["index"]).splitlines()
                diff = difflib.unified_diff(before, after, lineterm="", n=1)
                print(f"\n{status}: {entry['id']} (line {entry['line']}, {entry['tests']} tests)")
                print("\n".join(list(diff)[2:]))
        print(f"\nsecond campaign: seed {seed}, {len(results)} of {population}")
        header = ["killed", "timeout", "crashed", "survived", "no tests", "equivalent", "error"]
        print(f"{'module':40s} " + " ".join(f"{h:>10s}" for h in header) + "      score")
        totals: dict[str, int] = {}
        for module, row in sorted(rows.items()):
            for key, value in row.items():
                totals[key] = totals.get(key, 0) + value
            print(f"{module:40s} " + " ".join(f"{row.get(h, 0):10d}" for h in header) + _score(row))
        print(
            f"{'total':40s} " + " ".join(f"{totals.get(h, 0):10d}" for h in header) + _score(totals)
        )
        print(f"wall {wall:.0f} s (of which {stats_s:.0f} s recording the tests of each function)")
        out = ROOT / out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                {
                    "seed": seed,
                    "population": population,
                    "wall_s": round(wall),
                    "totals": totals,
                    "rows": rows,
                    "results": [
                        {k: v for k, v in e.items() if k not in ("function",)}
                        for e in sorted(results, key=lambda e: e["id"])
                    ],
                },
                indent=1,
            )
        )
        self.unexplained += len(unexplained)


def _score(row) -> str:
    detected = row.get("killed", 0) + row.get("timeout", 0) + row.get("crashed", 0)
    relevant = sum(row.values()) - row.get("equivalent", 0) - row.get("not applicable", 0)
    return f" {detected / relevant:10.4f}" if relevant else f" {math.nan:10.4f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seed", type=int, action="append", dest="seeds", help="2 unless given; repeatable"
    )
    parser.add_argument("--sample", type=int, default=600)
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument("--budget", type=float, default=10.0)
    parser.add_argument("--out", default="mutants/second.json")
    parser.add_argument(
        "--rerun", help="test only the survivors of this earlier run's JSON, or these ids (a file)"
    )
    options = parser.parse_args()
    if not options.seeds and not options.rerun:
        options.seeds = [2]
    campaign = Campaign(options)
    args = ["-q", "--capture=sys", "-p", "no:randomly", *selection_args()]
    pytest.main(args, plugins=[campaign])
    return 1 if getattr(campaign, "unexplained", 1) else 0


if __name__ == "__main__":
    sys.exit(main())
