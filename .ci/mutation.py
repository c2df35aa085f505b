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

import json
import os
import sys
from pathlib import Path

import libcst as cst
import mutmut.__main__ as mutmut_main
import mutmut.mutation.file_mutation as file_mutation
import mutmut.mutation.trampoline as trampoline
import mutmut.utils.format_utils as format_utils
import mutmut.workers.isolation as isolation

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
_skip = file_mutation.MutationVisitor._skip_node_and_children


def _skip_node_and_children(self, node):
    return isinstance(node, cst.Raise) or _skip(self, node)


file_mutation.MutationVisitor._skip_node_and_children = _skip_node_and_children

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

# When the statistics were collected in this run, every selected test has just passed on the
# unmutated code (the trampolines call the originals then, and a failure stops the run), so
# mutmut's second "clean" run of the same tests is skipped: it was a quarter of the campaign.
_run_stats_collection = mutmut_main.run_stats_collection
_stats_of_every_test_fresh = False


def run_stats_collection(runner, tests=None):
    global _stats_of_every_test_fresh
    _run_stats_collection(runner, tests)
    _stats_of_every_test_fresh = not tests


def _run_clean_tests(run_clean_tests):
    def wrapper(self, tests):
        if _stats_of_every_test_fresh:
            print("    (the statistics run just passed every selected test: clean run skipped)")
            return 0
        return run_clean_tests(self, tests)

    return wrapper


mutmut_main.run_stats_collection = run_stats_collection
for _runner in (isolation.ForkRunner, isolation.ForkServerRunner):
    _runner.run_clean_tests = _run_clean_tests(_runner.run_clean_tests)


def score(threshold: float = 0.97) -> int:
    """Print the totals of the last run and the score over non-equivalent mutants.

    Killed and timed out count as detected; "no tests" and survivors as not, except those that
    tests/MUTATION.md lists as equivalent (one ``- `name`: why`` line each)."""
    mutmut_main.export_cicd_stats.callback()
    stats = json.loads(Path("mutants/mutmut-cicd-stats.json").read_text())
    listed = Path("tests/MUTATION.md").read_text(encoding="utf-8")
    equivalent = 0
    survivors = []
    for path in mutmut_main.walk_mutatable_files():
        data = mutmut_main.SourceFileMutationData(path=path)
        data.load()
        for name, code in data.exit_code_by_key.items():
            status = mutmut_main.status_by_exit_code[code]
            if status in ("survived", "no tests"):
                if f"`{name}`" in listed:
                    equivalent += 1
                else:
                    survivors.append((status, name))
    detected = stats["killed"] + stats["timeout"]
    relevant = stats["total"] - equivalent - stats["skipped"]
    value = detected / relevant if relevant else 0.0
    for status, name in sorted(survivors):
        print(f"{status}: {name}")
    print(
        f"mutants {stats['total']}, killed {stats['killed']}, timed out {stats['timeout']}, "
        f"survived {stats['survived']}, no tests {stats['no_tests']}, suspicious "
        f"{stats['suspicious']}, skipped {stats['skipped']}, equivalent (listed) {equivalent}"
    )
    print(f"score {value:.4f} over {relevant} non-equivalent mutants (threshold {threshold})")
    return 0 if value >= threshold else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["score"]:
        sys.exit(score())
    sys.exit(mutmut_main.cli())
