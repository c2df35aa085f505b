"""The README's code runs as written, in the environment the README has made at that point
(issue 13, bug 1): so the front door cannot rot.

Each ```python block runs in a fresh interpreter where the project's optional packages cannot
be imported, except those a ``pip install`` in the block's own section installs (by name, or
through an extra of pyproject.toml): the first command installs only ``[project]
dependencies``. Each ```bash block's ``anycnn`` commands parse with the real parser.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

#: Importable module -> its distribution, for the packages the project can do without.
OPTIONAL = {
    "array_api_strict": "array-api-strict",
    "torch": "torch",
    "matplotlib": "matplotlib",
    "scipy": "scipy",
    "cupy": "cupy-cuda12x",
    "jax": "jax",
    "hypothesis": "hypothesis",
    "mpi4py": "mpi4py",
}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower()


def _sections() -> list[tuple[str, str]]:
    """(section text, language) per fenced block, the section being the text from the last
    heading to the block."""
    text = README.read_text()
    blocks = []
    for match in re.finditer(r"```(\w+)\n(.*?)```", text, flags=re.S):
        start = text.rfind("\n#", 0, match.start())
        blocks.append((text[max(start, 0) : match.start()], match.group(1), match.group(2)))
    return blocks


def _installed(section: str) -> set[str]:
    """Distributions the section's ``pip install`` commands add to the base dependencies."""
    names = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    extras = PYPROJECT["project"]["optional-dependencies"]
    for command in re.findall(r"pip install ([^`\n]+)", section):
        for word in shlex.split(command.replace("&&", " && ")):
            if word == "&&":
                break
            if word.startswith("-"):
                continue
            found = re.fullmatch(r"(?:\.|anycnn)\[([\w,-]+)\]", word)
            for extra in found.group(1).split(",") if found else ():
                names |= {_name(r) for r in extras.get(extra, [])}
            if not found and word not in (".", "-e"):
                names.add(_name(word))
    return names


PYTHON = [(s, code) for s, lang, code in _sections() if lang == "python"]
BASH = [code for _, lang, code in _sections() if lang == "bash"]

_RUNNER = """
import importlib.abc, importlib.util, sys
HIDDEN = set(sys.argv[1].split(",")) - {""}

class Absent(importlib.abc.MetaPathFinder):  # `import x` fails as for a package not installed
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Absent())
_find_spec = importlib.util.find_spec

def find_spec(name, package=None):  # and probing for it finds nothing
    return None if name.split(".")[0] in HIDDEN else _find_spec(name, package)

importlib.util.find_spec = find_spec
code = sys.stdin.read()
exec(compile(code, "README.md python block", "exec"), {"__name__": "readme"})
"""


def test_readme_has_a_python_tour():
    assert PYTHON, "README.md lost its ```python tour"


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_readme_python_block_runs_where_the_readme_says(index, tmp_path):
    section, code = PYTHON[index]
    installed = _installed(section)
    hidden = sorted(m for m, dist in OPTIONAL.items() if dist not in installed)
    absent = [
        m
        for m, dist in OPTIONAL.items()
        if dist in installed and m in code and importlib.util.find_spec(m) is None
    ]
    if absent:  # the README installs it for this block; this test environment lacks it
        pytest.skip(f"the block needs {', '.join(absent)}, which this environment lacks")
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "backends")]),
        MPLBACKEND="Agg",
    )
    env.pop("ANYCNN_BACKEND", None)
    done = subprocess.run(
        [sys.executable, "-c", _RUNNER, ",".join(hidden)],
        input=code,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, f"hidden: {hidden}\n{done.stdout}\n{done.stderr}"
    if "gradcheck(" in code:
        assert "PASS: max relative error" in done.stdout  # the tour's gradcheck report


def test_the_tour_needs_only_the_first_command():
    """The first command is `pip install .`: the tour's first block must not need an extra."""
    section, _ = next((s, c) for s, c in PYTHON if "## A tour" in s)
    assert "pip install" not in section


def test_readme_anycnn_commands_parse():
    from anycnn.cli import UsageError, build_parser

    commands = [
        line[line.index("anycnn ") :]
        for code in BASH
        for part in code.replace("&&", "\n").splitlines()
        for line in [part.strip()]
        if line.startswith("anycnn ")
    ]
    assert commands, "the README lost its anycnn commands"
    for command in commands:
        argv = shlex.split(command)[1:]
        try:
            build_parser().parse_args(argv)
        except UsageError as error:
            pytest.fail(f"README: `{command}` does not parse: {error}")
