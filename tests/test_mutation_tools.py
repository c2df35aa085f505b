"""The second mutation campaign's own mutator (.ci/mutation2.py, issue 22): the points it
numbers, what each operator writes, and that a mutant swapped into a live function changes what
it computes (and the original comes back)."""

import ast
import importlib.util
import sys
import textwrap
import types
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "mutation2.py"


@pytest.fixture(scope="module")
def m2():
    spec = importlib.util.spec_from_file_location("anycnn_mutation2", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOURCE = textwrap.dedent(
    '''
    def scale(a, b, n=3):
        """Docstring, left alone."""
        if a < b:
            raise ValueError(f"a {a} below b {b}")
        total = a * 2.0
        total += max(a, b)
        return total - n


    class Box:
        def size(self, values):
            return sum(values[1:4])
    '''
)


def _functions(m2, tmp_path):
    path = tmp_path / "mod.py"
    path.write_text(SOURCE)
    tree = ast.parse(SOURCE)
    return {q: m2.Function("mod", path, q, node, tree) for node, q in m2._functions(tree)}


def test_the_points_of_a_function_in_walk_order(m2, tmp_path):
    functions = _functions(m2, tmp_path)
    ops = [op for op, _, _ in functions["scale"].points]
    # the raise and its message, the docstring and the default n=3 are not mutation points
    assert ops == [
        "cmp-flip",
        "if-true",
        "if-false",
        "float-half",
        "keep-left",
        "keep-right",
        "stmt-del",
        "name-swap",
        "arg-swap",
        "stmt-del",
        "aug-flip",
        "keep-left",
        "keep-right",
        "return-none",
    ]
    ops = [op for op, _, _ in functions["Box.size"].points]
    assert ops == ["int-dec", "int-dec", "slice-lower", "slice-upper", "return-none"]


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        (0, "if a > b:"),
        (3, "total = a * 1.0"),
        (4, "total = a\n"),
        (7, "total += min(a, b)"),
        (8, "total += max(b, a)"),
        (10, "total -= max(a, b)"),
        (13, "return None"),
    ],
)
def test_each_operator_writes_its_mutant(m2, tmp_path, index, expected):
    function = _functions(m2, tmp_path)["scale"]
    assert expected in function.source(index)
    assert expected not in function.source(None)


def test_a_swapped_mutant_changes_the_live_function_and_the_original_returns(m2, tmp_path):
    functions = _functions(m2, tmp_path)
    module = types.ModuleType("mod")
    exec(compile(SOURCE, str(tmp_path / "mod.py"), "exec"), vars(module))
    sys.modules["mod"] = module
    try:
        box = module.Box()
        target = m2._resolve(module, "Box.size", functions["Box.size"].firstline)
        assert target is vars(module.Box)["size"]
        original = target.__code__
        assert box.size([1, 2, 3, 4, 5]) == 9
        target.__code__ = functions["Box.size"].mutated_code(2)  # values[:4]
        assert box.size([1, 2, 3, 4, 5]) == 10
        target.__code__ = original
        assert box.size([1, 2, 3, 4, 5]) == 9
    finally:
        del sys.modules["mod"]


def test_a_compiled_or_cached_function_is_not_resolved(m2):
    import functools

    module = types.ModuleType("mod2")
    exec("import functools\n@functools.cache\ndef f(x):\n    return x\n", vars(module))
    assert m2._resolve(module, "f", 2) is None
    assert isinstance(module.f, functools._lru_cache_wrapper)


def test_ids_count_each_operator_within_its_function(m2, tmp_path):
    """A mutant's id is the k-th point of its operator in its function: code added above the
    function (which moves every line) leaves the ids as they were."""
    functions = _functions(m2, tmp_path)
    ids = functions["Box.size"].ids
    assert ids == [
        "mod:Box.size:int-dec:0",
        "mod:Box.size:int-dec:1",
        "mod:Box.size:slice-lower:0",
        "mod:Box.size:slice-upper:0",
        "mod:Box.size:return-none:0",
    ]
    shifted = "import os\n\n\n" + SOURCE
    tree = ast.parse(shifted)
    moved = {q: m2.Function("mod", tmp_path / "mod.py", q, n, tree) for n, q in m2._functions(tree)}
    assert moved["Box.size"].ids == ids
    assert moved["scale"].ids == functions["scale"].ids


def test_a_mutants_place_in_the_draw_depends_on_its_id_and_the_seed_only(m2, tmp_path):
    functions = _functions(m2, tmp_path)
    population = [(f, i) for f in functions.values() for i in range(len(f.points))]
    drawn = {f.ids[i] for f, i in m2.drawn(population, 5, 6)}
    assert len(drawn) == 6
    # without a function the rest keep their order: the draw of the others shrinks, never swaps
    others = [(f, i) for f, i in population if f.qualname != "Box.size"]
    kept = {f.ids[i] for f, i in m2.drawn(others, 5, 6)}
    assert {d for d in drawn if "Box.size" not in d} <= kept
    assert drawn != {f.ids[i] for f, i in m2.drawn(population, 6, 6)}  # another seed, another draw


def test_lines_of_the_performance_patterns_are_not_mutated(m2, tmp_path):
    """[tool.mutmut] do_not_mutate_patterns: no expression starting on a matching line (a pool's
    work sizes) is a mutation point; the statement itself can still be deleted."""
    source = textwrap.dedent(
        """
        def op(work, n, c):
            size = c * 4
            run(work, n, c * 8 + 1, 0)
            if (halves := _map_halves(n, c, c * 2)) is not None:
                return halves
            return size
        """
    )
    tree = ast.parse(source)
    skip = frozenset(
        i
        for i, line in enumerate(source.splitlines(), 1)
        if "run(" in line or "_map_halves(" in line
    )
    node = next(n for n, q in m2._functions(tree) if q == "op")
    points = m2.Function("mod", tmp_path / "mod.py", "op", node, tree, skip).points
    lines = {line for _, line, _ in points}
    assert {op for op, line, _ in points if line == 4} == {"stmt-del"}
    assert 5 not in lines
    assert {op for op, _, _ in points} >= {"int-dec", "keep-left", "return-none"}
    text = "    run(work, n, 3)\n    chunk = _jit.direct_chunk(a)\nx = 1\n"
    assert m2.skipped_lines(text) == {1, 2}


def test_mutmuts_pragmas_are_honoured(m2):
    """A line with `# pragma: no mutate` (a reason may follow) holds no mutation point; a function
    whose `def` line says `# pragma: no mutate block` is left alone, as mutmut does."""
    source = textwrap.dedent(
        """
        def choose(n):  # pragma: no mutate block
            return n > 3

        def op(n):
            if n > 1:  # pragma: no mutate (a path to the same result)
                return n * 2
            return n
        """
    )
    assert m2.skipped_lines(source) == {6}
    tree = ast.parse(source)
    nodes = dict((q, n) for n, q in m2._functions(tree))
    assert m2.left_alone(nodes["choose"], source)
    assert not m2.left_alone(nodes["op"], source)
    points = m2._points(nodes["op"], m2.skipped_lines(source))
    assert {line for _, line, _ in points} == {7, 8}
