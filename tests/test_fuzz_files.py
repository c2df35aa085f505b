"""Property-based fuzzing of the files anycnn reads (issue 20): random byte flips, truncations,
member edits and JSON mutations of real checkpoints, and header edits, flips and truncations of
real IDX files, each run through ``anycnn evaluate`` (and ``anycnn train --resume``) in a worker
process with hard limits (tests/_fuzz_worker.py).

The property, for every case: the command exits 0 or 2; exit 2 prints exactly one line,
``error: ...``; nothing escapes as a traceback; the worker stays under its address-space limit
(``RLIMIT_AS``) and its resident peak under ``PEAK_MIB``; no case takes more than ``SECONDS``;
and no file is written anywhere but the checkpoint directory a resume writes to.

The default suite runs a few hundred cases (well under a minute); ``pytest -m slow`` runs ten
times more. ``ANYCNN_FUZZ_REPORT=FILE`` appends each test's figures (cases, peak memory, slowest
case) to FILE as JSON lines: the README's "Reliability" section quotes them.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
#: address-space limit of the worker (MiB): NumPy, SciPy and the backends take ~0.5 GiB of it
ADDRESS_MIB = 2048
#: the resident peak a case may reach (MiB)
PEAK_MIB = 600
#: the longest a case may take (s)
SECONDS = 20
#: cases per test in the default suite; -m slow runs SLOW_FACTOR times more
CASES = {"checkpoint": 120, "json": 80, "idx": 80, "resume": 20}
SLOW_FACTOR = 10


class Worker:
    """The worker process (tests/_fuzz_worker.py) and the figures of the cases it ran."""

    def __init__(self, cwd: Path):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "backends")]))
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "_fuzz_worker.py"), str(ADDRESS_MIB)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
        )
        assert json.loads(self.process.stdout.readline()) == {"ready": True}
        self.cases, self.peak_kib, self.slowest = 0, 0, (0.0, None)
        self.codes: dict[int, int] = {}

    def run(self, argv: list[str], what: str, *, count: bool = True) -> dict:
        self.process.stdin.write(json.dumps({"argv": argv, "timeout": SECONDS}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"the worker died on {what} (exit {self.process.poll()})"
        reply = json.loads(line)
        if not count:
            return reply
        self.cases += 1
        self.codes[reply["code"]] = self.codes.get(reply["code"], 0) + 1
        self.peak_kib = max(self.peak_kib, reply["maxrss_kib"])
        if reply["seconds"] > self.slowest[0]:
            self.slowest = (reply["seconds"], what)
        return reply

    def close(self, name: str) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)
        figures = {
            "test": name,
            "cases": self.cases,
            "exits": {str(k): v for k, v in sorted(self.codes.items(), key=str)},
            "peak_rss_mib": round(self.peak_kib / 1024, 1),
            "slowest_case_s": round(self.slowest[0], 3),
            "slowest_case": self.slowest[1],
        }
        print(json.dumps(figures))
        report = os.environ.get("ANYCNN_FUZZ_REPORT")
        if report:
            with open(report, "a") as stream:
                stream.write(json.dumps(figures) + "\n")


# --------------------------------------------------------------------------------------------
# The corpus: a real checkpoint (momentum, after steps: velocity and generator state stored) and
# a real small IDX data set, made through the command line
# --------------------------------------------------------------------------------------------
def _idx(array: np.ndarray) -> bytes:
    head = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return head + array.astype(np.uint8).tobytes()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from anycnn.cli import main

    root = tmp_path_factory.mktemp("corpus")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(20)
    for split, n in (("train", 24), ("t10k", 8)):
        images = rng.integers(0, 256, (n, 28, 28))
        labels = np.arange(n) % 10
        (data / f"{split}-images-idx3-ubyte").write_bytes(_idx(images))
        (data / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels)))
    argv = ["train", "--model", "dlt", "--dataset", str(data), "--optimizer", "momentum"]
    argv += ["--batch-size", "8", "--quiet"]
    assert main([*argv, "--epochs", "1", "--checkpoint-dir", str(root / "ck")]) == 0
    checkpoint = root / "ck" / "epoch-0001.npz"
    with zipfile.ZipFile(checkpoint) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    return {
        "root": root,
        "data": data,
        "checkpoint": checkpoint,
        "bytes": checkpoint.read_bytes(),
        "members": members,
        "train": argv,
    }


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() or p.is_symlink()
    }


def _check(reply: dict, what: str) -> None:
    """The property every case must have (see the module docstring)."""
    assert reply["escaped"] is None, f"{what}: escaped main:\n{reply['escaped']}"
    err = reply["stderr"]
    assert reply["code"] in (0, 2), f"{what}: exit {reply['code']}: {err}"
    if reply["code"] == 2:
        assert err.count("\n") == 1 and err.startswith("error: "), f"{what}: {err!r}"
    else:
        assert "Traceback" not in err and "error" not in err.lower(), f"{what}: {err!r}"
    assert reply["maxrss_kib"] < PEAK_MIB * 1024, f"{what}: peak {reply['maxrss_kib']} KiB"
    assert reply["seconds"] < SECONDS, f"{what}: {reply['seconds']:.1f} s"


class _Run:
    """One fuzz test: a worker, a fresh directory per case, and the no-stray-files check."""

    def __init__(self, corpus, tmp_path, name):
        self.corpus, self.name, self.count = corpus, name, 0
        self.root = tmp_path / "cases"
        self.root.mkdir()
        (self.root / "cwd").mkdir()
        self.worker = Worker(self.root / "cwd")
        # imports, first calls and JIT compilation are not a case: time the cases warm
        warm = self.worker.run(_evaluate(corpus, corpus["checkpoint"]), "warm-up", count=False)
        assert warm["code"] == 0, warm

    def case(self) -> Path:
        self.count += 1
        folder = self.root / f"case{self.count}"
        folder.mkdir()
        return folder

    def run(self, argv, what, folder, *, writes: Path | None = None) -> dict:
        before = _snapshot(self.root)
        reply = self.worker.run(argv, what)
        _check(reply, what)
        after = _snapshot(self.root)
        allowed = None if writes is None else str(writes.relative_to(self.root))
        changed = sorted(
            k
            for k in set(before) | set(after)
            if before.get(k) != after.get(k) and not (allowed and k.startswith(allowed + os.sep))
        )
        assert changed == [], f"{what}: wrote outside its directory: {changed}"
        shutil.rmtree(folder)
        return reply

    def close(self):
        self.worker.close(self.name)


def _evaluate(corpus, path):
    return ["evaluate", str(path), "--limit", "8", "--dataset", str(corpus["data"])]


# --------------------------------------------------------------------------------------------
# Mutations
# --------------------------------------------------------------------------------------------
_flips = st.lists(
    st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=8
)


def _flip(data: bytes, flips) -> bytes:
    out = bytearray(data)
    for where, mask in flips:
        out[int(where * len(out))] ^= mask
    return bytes(out)


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


_dims = st.lists(
    st.one_of(st.integers(0, 40), st.sampled_from([2**31, 2**32 - 1, 10**6])),
    min_size=0,
    max_size=4,
)
_dtypes = st.sampled_from(["<f4", "<f8", "|u1", "<i8", "|b1", ">f4", "<c16", "|O", "<U3"])


@st.composite
def _member_value(draw):
    """A member's new bytes: a small real array, a header claiming a huge shape with little
    data, or arbitrary bytes."""
    kind = draw(st.sampled_from(["array", "claim", "bytes"]))
    if kind == "array":
        shape = tuple(draw(st.lists(st.integers(0, 6), max_size=4)))
        dtype = draw(st.sampled_from(["<f4", "<f8", "|u1", "<i8"]))
        return _npy(np.ones(shape, dtype=dtype))
    if kind == "claim":
        header = io.BytesIO()
        shape = tuple(draw(_dims))
        dtype = draw(_dtypes)
        try:
            np.lib.format.write_array_header_1_0(
                header, {"descr": dtype, "fortran_order": False, "shape": shape}
            )
        except ValueError:
            return b"\x93NUMPY junk"
        return header.getvalue() + draw(st.binary(max_size=64))
    return draw(st.binary(max_size=256))


_methods = st.sampled_from(
    [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
)


@st.composite
def _member_edits(draw, names):
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["replace", "delete", "duplicate", "add", "recompress"]))
        name = draw(st.sampled_from(names))
        if op == "add":
            name = draw(
                st.sampled_from(
                    [
                        "extra/pad.npy",
                        "param/conv9.kernel.npy",
                        "optim/velocity/x.npy",
                        "../evil.npy",
                        "meta/other.npy",
                        "notes.txt",
                        "optim/steps.npy",
                    ]
                )
            )
        edits.append((op, name, draw(_member_value()), draw(_methods)))
    return edits


def _apply_member_edits(members: dict[str, bytes], edits) -> bytes:
    entries = [(name, data, zipfile.ZIP_STORED) for name, data in members.items()]
    for op, name, value, method in edits:
        if op == "replace":
            entries = [(n, value if n == name else d, m) for n, d, m in entries]
        elif op == "delete":
            entries = [e for e in entries if e[0] != name]
        elif op == "duplicate":
            entries += [(n, value, m) for n, d, m in entries if n == name][:1]
        elif op == "add":
            entries.append((name, value, method))
        else:
            entries = [(n, d, method if n == name else m) for n, d, m in entries]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, _quiet():
        for name, data, method in entries:
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return buffer.getvalue()


class _quiet:
    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("ignore")  # zipfile's "Duplicate name" is the point here

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)


_json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.sampled_from([0, -1, 1, 10**100, 2**63, 5 * 10**6, 30000]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=12),
        st.sampled_from(["test", "seed", "PCG64", "\n\x1b[2J", "normalize", "Convolution"]),
    ),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def _json_edit(draw, document):
    """A path into ``document`` (keys and indices chosen from what is there) and a new value
    (or a deletion) for it."""
    path = []
    node = document
    while isinstance(node, dict | list) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        path.append(key)
        node = node[key]
    return path, draw(st.one_of(st.just("<delete>"), _json_values))


def _apply_json_edit(document, edit):
    path, value = edit
    if not path:
        return value if value != "<delete>" else {}
    node = document
    for key in path[:-1]:
        node = node[key]
    if value == "<delete>":
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return document


def _with_json(corpus, key: str, edit) -> bytes:
    members = dict(corpus["members"])
    name = f"{key}.npy"
    document = json.loads(np.load(io.BytesIO(members[name]), allow_pickle=False).tobytes())
    document = _apply_json_edit(document, edit)
    text = json.dumps(document, allow_nan=True).encode()
    members[name] = _npy(np.frombuffer(text, np.uint8))
    return _apply_member_edits(members, [])


def _document(corpus, key):
    data = corpus["members"][f"{key}.npy"]
    return json.loads(np.load(io.BytesIO(data), allow_pickle=False).tobytes())


def _checkpoint_mutations(corpus):
    data = corpus["bytes"]
    return st.one_of(
        _flips.map(lambda flips: _flip(data, flips)),
        st.integers(0, len(data) - 1).map(lambda size: data[:size]),
        _member_edits(sorted(corpus["members"])).map(
            lambda edits: _apply_member_edits(corpus["members"], edits)
        ),
    )


def _json_mutations(corpus):
    return st.one_of(
        *[
            _json_edit(_document(corpus, key)).map(
                lambda edit, key=key: _with_json(corpus, key, edit)
            )
            for key in ("meta/info", "meta/config")
        ]
    )


_IDX_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte.gz",
]


@st.composite
def _idx_mutation(draw, corpus):
    """One of the four files of the corpus data set, changed: flipped bytes, truncated, a new
    header (type code, dimensions), or re-wrapped in or out of gzip."""
    name = draw(st.sampled_from(_IDX_FILES))
    data = (corpus["data"] / name).read_bytes()
    raw = gzip.decompress(data) if name.endswith(".gz") else data
    op = draw(st.sampled_from(["flip", "truncate", "header", "dims", "wrap"]))
    if op == "flip":
        raw = _flip(raw, draw(_flips))
    elif op == "truncate":
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif op == "header":
        raw = draw(st.binary(min_size=4, max_size=4)) + raw[4:]
    elif op == "dims":
        ndim = raw[3]
        dims = draw(
            st.lists(
                st.integers(0, 2**32 - 1) | st.sampled_from([1, 8, 24, 28, 56]),
                min_size=ndim,
                max_size=ndim,
            )
        )
        raw = raw[:4] + struct.pack(f">{ndim}I", *dims) + raw[4 + 4 * ndim :]
    compress = name.endswith(".gz") != (op == "wrap")
    if compress and draw(st.booleans()) and op != "wrap":
        packed = gzip.compress(raw)
        return name, packed[: draw(st.integers(10, len(packed)))]
    return name, gzip.compress(raw) if compress else raw


def _fuzz(run: _Run, strategy, body, cases: int, slow: bool) -> None:
    @settings(
        max_examples=cases * (SLOW_FACTOR if slow else 1),
        deadline=None,
        database=None,
        derandomize=not slow,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def test(mutation):
        body(run, mutation)

    try:
        test()
    finally:
        run.close()


def _checkpoint_body(run, data):
    folder = run.case()
    (folder / "model.npz").write_bytes(data)
    run.run(_evaluate(run.corpus, folder / "model.npz"), f"checkpoint {len(data)} bytes", folder)


def _idx_body(run, mutation):
    name, data = mutation
    folder = run.case()
    shutil.copytree(run.corpus["data"], folder / "data")
    (folder / "data" / name).write_bytes(data)
    argv = ["evaluate", str(run.corpus["checkpoint"]), "--limit", "8"]
    run.run([*argv, "--dataset", str(folder / "data")], f"{name} {data[:20]!r}", folder)


def _resume_body(run, data):
    folder = run.case()
    (folder / "ck").mkdir()
    (folder / "ck" / "epoch-0001.npz").write_bytes(data)
    argv = [*run.corpus["train"], "--epochs", "2", "--checkpoint-dir", str(folder / "ck")]
    run.run([*argv, "--resume"], "resume", folder, writes=folder / "ck")


@pytest.mark.parametrize("slow", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_fuzzed_checkpoints(corpus, tmp_path, slow):
    run = _Run(corpus, tmp_path, f"checkpoints{'-slow' if slow else ''}")
    _fuzz(run, _checkpoint_mutations(corpus), _checkpoint_body, CASES["checkpoint"], slow)


@pytest.mark.parametrize("slow", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_fuzzed_checkpoint_json(corpus, tmp_path, slow):
    run = _Run(corpus, tmp_path, f"checkpoint-json{'-slow' if slow else ''}")
    _fuzz(run, _json_mutations(corpus), _checkpoint_body, CASES["json"], slow)


@pytest.mark.parametrize("slow", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_fuzzed_idx_files(corpus, tmp_path, slow):
    run = _Run(corpus, tmp_path, f"idx{'-slow' if slow else ''}")
    _fuzz(run, _idx_mutation(corpus), _idx_body, CASES["idx"], slow)


@pytest.mark.parametrize("slow", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_fuzzed_resume(corpus, tmp_path, slow):
    run = _Run(corpus, tmp_path, f"resume{'-slow' if slow else ''}")
    strategy = st.one_of(_checkpoint_mutations(corpus), _json_mutations(corpus))
    _fuzz(run, strategy, _resume_body, CASES["resume"], slow)
