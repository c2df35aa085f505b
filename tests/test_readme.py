"""The README's Python tour runs as written (so the front door cannot rot)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_a_python_tour():
    assert _python_blocks(), "README.md lost its ```python tour"


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_block_runs(index, capsys):
    pytest.importorskip("array_api_strict")
    namespace: dict[str, object] = {"__name__": "readme"}
    exec(compile(_python_blocks()[index], f"README.md python block {index}", "exec"), namespace)
    out = capsys.readouterr().out
    if "gradcheck(" in _python_blocks()[index]:
        assert "PASS: max relative error" in out  # the tour's gradcheck report
