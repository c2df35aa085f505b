"""`tox -e mutation`: mutmut 3 over the maths and training core (tests/MUTATION.md).

mutmut names a mutant after its file's path (``anycnn/ops.py`` -> ``anycnn.ops``) and
activates it by comparing that name with the running function's ``__module__``. The NumPy
plugin's source root is ``backends/`` (imported as ``anycnn_numpy``), so its mutants would be
named ``backends.anycnn_numpy....`` and never switched on. This launcher drops that prefix
(mutmut 3.8's ``get_mutant_name``, pinned in tox.ini) and then runs mutmut's own command line:

    python .ci/mutation.py run [--max-children N] [MUTANT ...]
    python .ci/mutation.py results | show NAME | export-cicd-stats
    python .ci/mutation.py score        # the score over non-equivalent mutants (MUTATION.md)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import sys
import time
import tomllib
from math import ceil
from pathlib import Path

import libcst as cst
import mutmut.__main__ as mutmut_main
import mutmut.mutation.file_mutation as file_mutation
import mutmut.mutation.mutators as mutators
import mutmut.mutation.trampoline as trampoline
import mutmut.utils.format_utils as format_utils
import mutmut.workers.isolation as isolation
from mutation_session import KILLERS, SessionRunner, run_mutmut_with_session
from mutmut.utils.format_utils import mangled_name_from_mutant_name, strip_prefix

SOURCE_ROOTS = ("backends.",)  # second source root of pyproject's [tool.setuptools.packages.find]
_get_mutant_name = format_utils.get_mutant_name


def get_mutant_name(relative_source_path: Path, mutant_method_name: str) -> str:
    name = _get_mutant_name(relative_source_path, mutant_method_name)
    for root in SOURCE_ROOTS:
        name = name.removeprefix(root)
    return name


format_utils.get_mutant_name = get_mutant_name
file_mutation.get_mutant_name = get_mutant_name
mutmut_main.get_mutant_name = get_mutant_name

# The wording of error messages is not mutated: a `raise` statement is left whole (its condition,
# in the `if` around it, is mutated as usual). Tests check the exception's type and the names the
# message must carry (pytest.raises(match=...)); "XX" glued to a message, or its case changed,
# is not wrong code, and such mutants were most of the survivors in checkpoint.py's checks.
# An `assert` is left whole too: in this code each one narrows a type for mypy ("build the layer
# first") where the public calls cannot get there unbuilt, and `python -O` drops it.
_skip = file_mutation.MutationVisitor._skip_node_and_children


def _is_strict(node) -> bool:
    """``strict=`` of a call (``zip(..., strict=True)``)."""
    return isinstance(node, cst.Arg) and node.keyword is not None and node.keyword.value == "strict"


def _skip_node_and_children(self, node):
    return isinstance(node, (cst.Raise, cst.Assert)) or _is_strict(node) or _skip(self, node)


file_mutation.MutationVisitor._skip_node_and_children = _skip_node_and_children

# `zip(..., strict=True)` keeps its `strict=` (neither dropped, nor None, nor False), for the
# reason an assert stays whole: ruff's B905 asks every zip for it, and here it states that the
# sequences have one length, which the code has made sure of just before (a kernel's sizes and
# the input's spatial sizes, both checked to have d entries). A mutant that drops it changes
# nothing a caller can see; 21 such survivors in the 10% run of 2026-12-07 were this alone.
_operator_arg_removal = mutators.operator_arg_removal


def operator_arg_removal(node):
    kept = [arg for arg in node.args if _is_strict(arg)]
    for mutant in _operator_arg_removal(node):
        strict = [arg for arg in mutant.args if _is_strict(arg)]
        if len(strict) == len(kept) and all(
            a.deep_equals(b) for a, b in zip(strict, kept, strict=True)
        ):
            yield mutant


# A string is mutated once, to "XX" + s + "XX", not also to its lower and upper case. A test that
# tells a string from its case-changed copy tells it from the XX copy too (whatever compares the
# letters sees two more), so the case mutants are killed together with their XX sibling, or are
# equivalent: the names this code takes from users are looked up case-insensitively
# (activations, losses, modes: FullyConnected's default activation="SIGMOID" is the same layer).
_operator_string = mutators.operator_string


def operator_string(node):
    return itertools.islice(_operator_string(node), 1)  # its first mutant is the XX one


for _index, (_kind, _operator) in enumerate(mutators.mutation_operators):
    if _operator is _operator_string:
        mutators.mutation_operators[_index] = (_kind, operator_string)
    elif _operator is _operator_arg_removal:
        mutators.mutation_operators[_index] = (_kind, operator_arg_removal)

# Some tests start `python -m anycnn ...` with PYTHONPATH set to their own checkout, which in
# mutants/ is the mutated copy. While mutmut records which tests reach which function ("stats")
# such a process would record too, and fail: that needs mutmut's configuration in its working
# directory. The mode is kept in this process only; the processes the tests start run the
# original functions then, and the active mutant (inherited) otherwise.
_set_mutant_under_test = trampoline.set_mutant_under_test


def set_mutant_under_test(name: str | None) -> None:
    _set_mutant_under_test(name)
    if name == "stats":
        os.environ.pop("MUTANT_UNDER_TEST", None)


mutmut_main.set_mutant_under_test = set_mutant_under_test
isolation.set_mutant_under_test = set_mutant_under_test

# mutmut's second "clean" run of the selected tests on unmutated code, in a child, is replaced
# by SessionRunner.run_clean_tests (.ci/mutation_session.py, Note [A warm parent]): the fastest
# test of each mutated function, in the main process; every kill is checked on the original code
# after the run (verify_kills). The clean run was a quarter of the campaign.

# [tool.anycnn.mutation] in pyproject.toml: the campaign's budget.
#   test_budget_s: each mutant runs the tests that reach its function, fastest first, while their
#     recorded durations add up to at most this (the fastest one always). A mutant that only a
#     slower test would kill counts as a survivor: the score is a lower bound of the suite's.
#   sample: the fraction of mutants tested, per file (Note [A stratified sample]); 1 tests every
#     mutant.
SETTINGS = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["anycnn"]["mutation"]
TEST_BUDGET_S = float(SETTINGS.get("test_budget_s", math.inf))
# MUTATION_SAMPLE overrides the sample for one run (tox passes it on).
SAMPLE = float(os.environ.get("MUTATION_SAMPLE") or SETTINGS.get("sample", 1.0))


def _rank(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")


def stratified_sample(names: list[str], fraction: float) -> set[str]:
    """Note [A stratified sample]: of each file's mutants (``names`` are one file's), the
    ``round(fraction * n)`` (at least one) whose names hash lowest. Every file of the scope is
    then in the sample in proportion to its size, the same mutants every run on the same code
    (no seed: the hash of the name), and each file's mutants are drawn alike whatever they
    are, so the sample's score estimates the file's and the whole campaign's without a weight;
    the score prints its 95% interval."""
    count = max(1, round(fraction * len(names)))
    return set(sorted(names, key=_rank)[:count])


# Note [Killers first]: the tests that killed earlier mutants of the same function are tried
# first. A function's mutants are submitted one after another (mutmut sorts them by their
# function's tests), and a test that told one of them from the original reads what the function
# computes, so it is the likeliest to tell the next one too. The children write each kill to
# KILLERS as it happens; the submitting thread reads what is new before each submission. A
# killer costs the budget like any test (so a survivor still runs at most test_budget_s of
# recorded time), but it is taken even where it is slower than the tests fastest-first would
# have taken: the selection is sharper, not larger.
_kills_by_function: dict[str, dict[str, int]] = {}
_killers_read = [0]
_KILLERS = Path(KILLERS).resolve()  # the mutants' children run in mutants/


def _read_new_kills() -> None:
    try:
        with _KILLERS.open("rb") as lines:
            lines.seek(_killers_read[0])
            new = lines.read()
    except FileNotFoundError:
        return
    end = new.rfind(b"\n") + 1  # a line still being written is read next time
    _killers_read[0] += end
    for line in new[:end].decode().splitlines():
        mutant, killer = json.loads(line)[:2]
        function = mangled_name_from_mutant_name(mutant)
        counts = _kills_by_function.setdefault(function, {})
        killer = strip_prefix(killer, prefix="mutants/")
        counts[killer] = counts.get(killer, 0) + 1


def _within_budget(mutant_name: str, tests: list[str]) -> list[str]:
    """The tests a mutant runs, in order: the killers of its function's earlier mutants (most
    kills first), then the rest fastest first, while their recorded durations add up to at most
    test_budget_s (the first one always)."""
    durations = mutmut_main.state().duration_by_test
    _read_new_kills()
    kills = _kills_by_function.get(mangled_name_from_mutant_name(mutant_name), {})
    order = sorted(tests, key=lambda name: (-kills.get(name, 0), durations[name], name))
    chosen, total = [], 0.0
    for test in order:
        if chosen and total + durations[test] > TEST_BUDGET_S:
            if kills.get(test):
                continue  # a slow killer does not take the place of the fast tests
            break
        total += durations[test]
        chosen.append(test)
    return chosen


def _budgeted(submit):
    def wrapper(self, mutant_name, tests, cpu_time_limit, estimated_time):
        if tests:
            tests = _within_budget(mutant_name, list(tests))
            durations = mutmut_main.state().duration_by_test
            estimated_time = sum(durations[name] for name in tests)
            cfg = mutmut_main.config()
            cpu_time_limit = ceil(
                (estimated_time + cfg.timeout_constant) * cfg.timeout_multiplier * 2
            )
        return submit(self, mutant_name, tests, cpu_time_limit, estimated_time)

    return wrapper


for _runner in (isolation.ForkRunner, isolation.ForkServerRunner, SessionRunner):
    _runner.submit = _budgeted(_runner.submit)

_collect = mutmut_main.collect_source_file_mutation_data


def collect_source_file_mutation_data(*, mutant_names):
    mutants, by_path = _collect(mutant_names=mutant_names)
    if SAMPLE < 1 and not mutant_names:  # mutants named on the command line all run
        by_file: dict[str, list[str]] = {}
        for data, name, _ in mutants:
            by_file.setdefault(str(data.path), []).append(name)
        chosen = set()
        for names in by_file.values():
            chosen |= stratified_sample(names, SAMPLE)
        mutants = [entry for entry in mutants if entry[1] in chosen]
    return mutants, by_path


mutmut_main.collect_source_file_mutation_data = collect_source_file_mutation_data


# mutmut's bookkeeping runs in its own thread, beside the main thread that forks the mutants'
# children, and Python runs one thread at a time: per mutant it added up the totals of every file
# (print_stats: the whole campaign's results, ten thousand of them, per mutant) and rewrote the
# file's whole record of results (SourceFileMutationData.save). Here the totals are printed at
# most once a second and a file's record is written at most every 5 s, and when the run ends.
_print_stats = mutmut_main.print_stats
_printed_at = 0.0


def print_stats(source_file_mutation_data_by_path, force_output=False):
    global _printed_at
    now = time.monotonic()
    if force_output or now - _printed_at >= 1.0:
        _printed_at = now
        _print_stats(source_file_mutation_data_by_path, force_output=force_output)


mutmut_main.print_stats = print_stats
_unsaved: dict = {}  # the records with results not yet written, by path
_saved_at = [0.0]


def _save_unsaved(force: bool = False) -> None:
    if force or time.monotonic() - _saved_at[0] >= 5.0:
        for data in list(_unsaved.values()):
            data.save()
        _unsaved.clear()
        _saved_at[0] = time.monotonic()


def _register_mutant_result(result, mutation_data_by_mutant_name):
    data = mutation_data_by_mutant_name[result.mutant_name]
    assert result.mutant_name in data.exit_code_by_key, result.mutant_name
    data.exit_code_by_key[result.mutant_name] = result.exit_code
    data.durations_by_key[result.mutant_name] = result.duration
    _unsaved[str(data.path)] = data
    _save_unsaved()


mutmut_main._register_mutant_result = _register_mutant_result
_shutdown = SessionRunner.shutdown


def _shutdown_and_save(self) -> None:
    _shutdown(self)
    _save_unsaved(force=True)


SessionRunner.shutdown = _shutdown_and_save


# MUTATION_TESTS="tests/test_gradcheck.py -m 'not slow'" narrows the suite while working on one
# module's survivors (a development aid: a campaign's score uses pyproject's whole selection).
if os.environ.get("MUTATION_TESTS"):
    import shlex

    from mutmut.configuration import config as _config

    _config().pytest_add_cli_args_test_selection = shlex.split(os.environ["MUTATION_TESTS"])


# segfault: killed by a signal (mutmut names SIGSEGV and SIGKILL; SIGABRT, e.g. a Numba kernel's
# failed bounds check in a mutant of the FFT path, is counted with them): the suite fails too
DETECTED = ("killed", "timeout", "segfault")
UNTESTED = ("not checked", "skipped")


def wilson(value: float, n: int) -> tuple[float, float]:
    """The 95% (Wilson) interval of a score ``value`` over ``n`` mutants."""
    z = 1.96
    centre = (value + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(value * (1 - value) / n + z * z / (4 * n**2)) / (1 + z * z / n)
    return centre - half, centre + half


def _interval(value: float, n: int) -> str:
    low, high = wilson(value, n)
    return f"{low:.4f}-{high:.4f}"


# Note [The gate]: what `tox -e mutation` fails on. The issue asks for 0.97 of the
# non-equivalent mutants killed over the scope: the overall score is the gate. A file's own
# score is printed, not gated at 0.97 as such: one survivor of a 22-mutant file is 0.955, and a
# 10% sample holds 2 of its mutants, so a per-file 0.97 gate fails on one mutant. A file fails
# only where it is clearly below, its whole 95% (Wilson) interval under the threshold (upper
# bound < 0.97): one or two survivors in a file of 20-40 do not fail the run (21 of 22: upper
# bound 0.99; 28 of 30: 0.98), a file with many still does however good the rest is (_nd's 9 of
# 35 on 2026-12-07: 0.42; _dense's 29 of 34 on 2026-12-08, five real gaps: 0.94). The smaller
# the sample, the fewer mutants a file has in it and the wider its interval: a 10% sample cannot
# tell a small file's 0.9 from 0.97, the full scope can.
def clearly_below(detected: int, relevant: int, threshold: float) -> bool:
    """Note [The gate]: whether a file's score is below ``threshold`` beyond its 95% interval."""
    return relevant > 0 and wilson(detected / relevant, relevant)[1] < threshold


def score(threshold: float = 0.97) -> int:
    """Print the totals of the last run, per module and in all, and the score over the
    non-equivalent mutants tested; fail when the whole is below ``threshold`` or a module is
    clearly below it (Note [The gate]).

    Killed, timed out and killed by a signal count as detected; "no tests", survivors and
    "suspicious" (a failure of the campaign's own machinery, or a kill that the original code
    also fails: mutation_session.verify_kills) as not, except the survivors that tests/MUTATION.md
    lists as equivalent (one ``- `name`: why`` line each). With a sample, the score estimates
    the whole population's: its 95% interval (Wilson) is printed too."""
    listed = Path("tests/MUTATION.md").read_text(encoding="utf-8")
    rows: dict[str, dict[str, int]] = {}
    survivors = []
    for path in mutmut_main.walk_mutatable_files():
        data = mutmut_main.SourceFileMutationData(path=path)
        data.load()
        row = rows.setdefault(str(path), {})
        for name, code in data.exit_code_by_key.items():
            status = mutmut_main.status_by_exit_code[code]
            if isinstance(code, int) and code < 0 and status == "suspicious":
                status = "segfault"  # killed by a signal mutmut has no name for (SIGABRT)
            if status in ("survived", "no tests") and f"`{name}`" in listed:
                status = "equivalent"
            row[status] = row.get(status, 0) + 1
            if status not in DETECTED + UNTESTED + ("equivalent",):
                survivors.append((status, name))
    for status, name in sorted(survivors):
        print(f"{status}: {name}")
    columns = ["killed", "timeout", "segfault", "survived", "no tests", "suspicious"]
    columns += ["equivalent", "not checked"]
    print(f"{'file':40s}" + "".join(f"{c:>12s}" for c in columns) + "       score")
    failed = False
    totals: dict[str, int] = {}
    for name, row in sorted(rows.items()) + [("total", totals)]:
        if name != "total":
            for status, n in row.items():
                totals[status] = totals.get(status, 0) + n
        detected = sum(row.get(status, 0) for status in DETECTED)
        tested = sum(n for status, n in row.items() if status not in UNTESTED)
        relevant = tested - row.get("equivalent", 0)
        value = detected / relevant if relevant else 1.0
        if name == "total":
            failed |= relevant > 0 and value < threshold
            mark = "  below" if relevant > 0 and value < threshold else ""
        else:
            below = clearly_below(detected, relevant, threshold)
            failed |= below
            mark = "  clearly below" if below else ""
        cells = "".join(f"{row.get(c, 0):12d}" for c in columns)
        print(f"{name:40s}{cells}{value:12.4f}{mark}")
        if name == "total":
            line = f"score {value:.4f} = {detected} / {relevant} non-equivalent mutants tested"
    if SAMPLE < 1 and relevant:
        line += f" (a {SAMPLE:.0%} sample: 95% interval {_interval(value, relevant)})"
    print(
        f"{line}; threshold {threshold} in all, and no file's 95% interval wholly below it"
        " (Note [The gate])"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["score"]:
        sys.exit(score())
    if sys.argv[1:2] == ["run"]:
        sys.exit(run_mutmut_with_session(sys.argv[1:]))
    sys.exit(mutmut_main.cli())
