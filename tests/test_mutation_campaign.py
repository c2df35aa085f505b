"""The mutation campaign's adjustments to mutmut (.ci/mutation.py, .ci/mutation_session.py,
tests/MUTATION.md; issue 22): what is mutated, the order and budget of each mutant's tests, and
the counter the statistics shards share. mutmut is the `tox -e mutation` env's dependency, not
the test extra's: without it these tests skip."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("mutmut")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def campaign():
    sys.path.insert(0, str(ROOT / ".ci"))
    cwd = os.getcwd()
    os.chdir(ROOT)  # the launcher reads pyproject.toml's [tool.anycnn.mutation] from here
    try:
        return importlib.import_module("mutation")
    finally:
        os.chdir(cwd)
        sys.path.remove(str(ROOT / ".ci"))


SOURCE = """
def f(a):
    assert a is not None, "f before build"
    if a == "sigmoid":
        raise ValueError("bad a")
    return "Tanh" + a
"""


def test_strings_get_the_xx_mutant_only_and_raise_and_assert_stay_whole(campaign):
    from mutmut.mutation import file_mutation

    mutated = file_mutation.mutate_file_contents("x.py", SOURCE, covered_lines=None)
    code = mutated.code.split("\nmutants_x_f__mutmut[")[0]  # the functions, not the table
    bodies = code.split("def x_f__mutmut_")[2:]  # the mutants, after the original
    changed = [
        line.strip()
        for body in bodies
        for line in body.splitlines()[1:]
        if line.strip() and line.strip() not in SOURCE
    ]
    assert len(mutated.mutant_names) == 4
    assert changed == [
        'if a != "sigmoid":',
        'if a == "XXsigmoidXX":',
        'return "Tanh" - a',
        'return "XXTanhXX" + a',
    ]
    assert "SIGMOID" not in mutated.code and "sigmoid" in mutated.code
    assert "F BEFORE BUILD" not in mutated.code and "XXbad" not in mutated.code


def test_zips_keep_their_strict_keyword_and_other_arguments_still_mutate(campaign):
    from mutmut.mutation import file_mutation

    source = "def g(a, b):\n    return list(zip(a, b, strict=True))\n"
    mutated = file_mutation.mutate_file_contents("x.py", source, covered_lines=None)
    code = mutated.code.split("\nmutants_x_g__mutmut[")[0]
    bodies = code.split("def x_g__mutmut_")[2:]
    lines = sorted(body.splitlines()[1].strip() for body in bodies)
    assert lines == [
        "return list(None)",
        "return list(zip(None, b, strict=True))",
        "return list(zip(a, None, strict=True))",
        "return list(zip(a, strict=True))",
        "return list(zip(b, strict=True))",
    ]


def test_killers_first_then_the_fastest_within_the_budget(campaign, tmp_path, monkeypatch):
    from mutmut.state import state

    durations = {"fast": 0.1, "mid": 1.0, "slow": 3.0, "killer": 2.5, "slow_killer": 4.9}
    monkeypatch.setattr(state(), "duration_by_test", durations)
    killers = tmp_path / "killers.txt"
    monkeypatch.setattr(campaign, "_KILLERS", killers)
    monkeypatch.setattr(campaign, "_killers_read", [0])
    monkeypatch.setattr(campaign, "_kills_by_function", {})
    monkeypatch.setattr(campaign, "TEST_BUDGET_S", 5.0)
    name = "anycnn.ops.x_f__mutmut_{}"
    tests = list(durations)
    # no kill yet: the fastest first, while they fit
    assert campaign._within_budget(name.format(1), tests) == ["fast", "mid", "killer"]
    lines = [
        [name.format(1), "mutants/killer", ["fast", "mid"]],
        [name.format(2), "killer", []],
        [name.format(3), "slow_killer", []],
        ["anycnn.ops.x_g__mutmut_1", "slow", []],  # another function's killer
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    killers.write_text(text + json.dumps([name.format(4), "mid; [x]", []]))  # still being written
    # the most kills first; a killer that does not fit is passed over; then the fastest
    assert campaign._within_budget(name.format(5), tests) == ["killer", "fast", "mid"]
    assert campaign._kills_by_function["anycnn.ops.x_f"] == {"killer": 2, "slow_killer": 1}
    with killers.open("a") as more:
        more.write("\n")
    campaign._within_budget(name.format(6), tests)
    assert campaign._kills_by_function["anycnn.ops.x_f"]["mid; [x]"] == 1  # any test id
    # the first test always runs, however slow
    assert campaign._within_budget(name.format(7), ["slow", "slow_killer"]) == ["slow_killer"]


def test_the_statistics_shards_take_each_file_once(campaign, tmp_path):
    session = importlib.import_module("mutation_session")
    counter = tmp_path / "queue"
    taken = []
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            got = [session._take(counter) for _ in range(50)]
            (tmp_path / "child").write_text(" ".join(map(str, got)))
            code = 0
        finally:
            os._exit(code)
    taken = [session._take(counter) for _ in range(50)]
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    child = [int(n) for n in (tmp_path / "child").read_text().split()]
    assert sorted(taken + child) == list(range(100))
    assert taken == sorted(taken) and child == sorted(child)


def test_the_stratified_sample_takes_each_files_share_the_same_every_time(campaign):
    names = [f"anycnn.ops.x_f__mutmut_{i}" for i in range(1, 201)]
    chosen = campaign.stratified_sample(names, 0.1)
    assert len(chosen) == 20 and chosen <= set(names)
    assert campaign.stratified_sample(list(reversed(names)), 0.1) == chosen
    assert len(campaign.stratified_sample(names[:3], 0.1)) == 1  # every file has a part
    assert campaign.stratified_sample(names[:30], 0.1) <= set(names[:30])
    assert campaign.stratified_sample(names, 1.0) == set(names)


def test_the_gate_is_the_overall_score_and_files_clearly_below_it(campaign):
    """Note [The gate]: a file fails only when its whole 95% interval lies under 0.97: one
    or two survivors in a small file do not fail the run, a file with many does."""
    assert not campaign.clearly_below(21, 22, 0.97)  # one survivor of 22: 0.955
    assert not campaign.clearly_below(28, 30, 0.97)  # two of 30: 0.933
    assert not campaign.clearly_below(98, 102, 0.97)  # network's 0.961 of 2026-12-08
    assert campaign.clearly_below(29, 34, 0.97)  # _dense's 0.853 of 2026-12-08 (5 of 34)
    assert campaign.clearly_below(9, 35, 0.97)  # _nd's 0.257 of 2026-12-07
    assert campaign.clearly_below(400, 430, 0.97)  # 0.930 over a file of 430
    assert not campaign.clearly_below(0, 0, 0.97)  # nothing tested: nothing to fail
    low, high = campaign.wilson(0.9739, 1113)  # the run of 2026-12-08: 0.9628-0.9818
    assert (round(low, 4), round(high, 4)) == (0.9628, 0.9818)
