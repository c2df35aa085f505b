"""Compile every CUDA kernel of anycnn_cupy with nvcc, the way CuPy would, without a GPU.

CuPy turns a ``cupy.ElementwiseKernel`` into a translation unit (``typedef <type> T;``, the
preamble, then ``extern "C" __global__ void name(CArray<...> ..., CIndexer<...> _ind)`` looping
``CUPY_FOR(i, _ind.size())``) and compiles it with NVRTC at the first call. This script writes
the same shape of translation unit for every source in :mod:`anycnn_cupy._sources`, for float
and double and both index widths, and compiles it with nvcc for one architecture against CuPy's
own headers, reporting ptxas's registers and spills. It needs nvcc and an installed CuPy (for
its headers), not a GPU.

It approximates CuPy's wrapper (written from CuPy 14's ``_get_simple_elementwise_kernel_code``):
the exact CArray template arguments CuPy picks per argument may differ, which changes nothing
for the kernel bodies. On a GPU, CuPy compiles the real thing: run the test suite there.

Usage::

    python bench/gpu/compile_check.py [--arch sm_90] [--nvcc PATH] [--out FILE]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "backends")]

from anycnn_cupy import _sources  # noqa: E402 - needs the path above

CTYPES = {"float32": "float", "float64": "double"}
INT_TYPES = {"int32": "int", "int64": "long long"}
#: parameters the launchers pass as scalars (the others of type T are arrays)
SCALARS = {"scale", "p1", "p2", "lr", "momentum"}
#: raw parameters that are 1-D (the rest are (N, C, H, W) maps)
RAW_1D = {"A", "B", "beta", "bias"}


def parse(text: str) -> list[tuple[bool, str, str]]:
    out = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        words = item.split()
        out.append((words[0] == "raw", words[-2], words[-1]))
    return out


def translation_unit(source: _sources.KernelSource, dtype: str, wide: bool) -> str:
    ctype = CTYPES[dtype]
    params, decls = [], []
    ins, outs = parse(source.in_params), parse(source.out_params)
    for index, (raw, kind, name) in enumerate(ins + outs):
        output = index >= len(ins)
        if kind in INT_TYPES:
            params.append(f"{INT_TYPES[kind]} {name}")
        elif raw:
            ndim = 1 if name in RAW_1D else 4
            params.append(f"const CArray<{ctype}, {ndim}, true, true> {name}")
        elif not output and name in SCALARS:
            params.append(f"{ctype} {name}")
        else:
            params.append(f"CArray<{ctype}, 1, true, true> _raw_{name}")
            if output:
                decls.append(f"{ctype} &{name} = _raw_{name}[_ind.get()];")
            else:
                decls.append(f"const {ctype} {name} = _raw_{name}[_ind.get()];")
    params.append("CIndexer<1, true> _ind")
    return f"""#include <cupy/complex.cuh>
#include <cupy/carray.cuh>
#include <cupy/atomics.cuh>
typedef {ctype} T;
{source.full_preamble(wide)}
extern "C" __global__ void {source.name}({", ".join(params)}) {{
  ;
  #pragma unroll 1
  CUPY_FOR(i, _ind.size()) {{
    _ind.set(i);
    {" ".join(decls)}
    {source.operation};
  }}
  ;
}}
"""


def compile_one(nvcc: str, include: str, arch: str, folder: Path, source, dtype, wide) -> dict:
    stem = f"{source.name}_{dtype}_{'wide' if wide else 'narrow'}"
    cu = folder / f"{stem}.cu"
    cu.write_text(translation_unit(source, dtype, wide))
    done = subprocess.run(
        [
            nvcc,
            f"-arch={arch}",
            "-std=c++17",
            f"-I{include}",
            "-Xptxas",
            "-v",
            "-c",
            str(cu),
            "-o",
            str(folder / f"{stem}.o"),
        ],
        capture_output=True,
        text=True,
    )
    log = done.stdout + done.stderr
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    warnings = [line for line in log.splitlines() if "warning" in line.lower()]
    return {
        "kernel": source.name,
        "dtype": dtype,
        "index": "long long" if wide else "int",
        "ok": done.returncode == 0,
        "registers": int(registers.group(1)) if registers else None,
        "spill_bytes": (int(spills.group(1)) + int(spills.group(2))) if spills else None,
        "warnings": warnings,
        "errors": "" if done.returncode == 0 else log[-4000:],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="sm_90", help="nvcc -arch (default sm_90, the H100)")
    parser.add_argument("--nvcc", default=None, help="nvcc path (default: PATH, CUDA_PATH)")
    parser.add_argument("--out", default=None, help="write the JSON report here")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    nvcc = (
        args.nvcc
        or shutil.which("nvcc")
        or next((str(p) for p in sorted(Path("/usr/local").glob("cuda*/bin/nvcc"))), None)
    )
    spec = importlib.util.find_spec("cupy")
    if nvcc is None or spec is None:
        print(f"compile_check: needs nvcc ({nvcc}) and CuPy's headers ({spec}); skipped")
        return 2
    include = str(Path(spec.submodule_search_locations[0]) / "_core" / "include")
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    with (
        tempfile.TemporaryDirectory(prefix="anycnn-nvcc-") as tmp,
        concurrent.futures.ThreadPoolExecutor(args.jobs) as pool,
    ):
        jobs = [
            pool.submit(compile_one, nvcc, include, args.arch, Path(tmp), s, d, w)
            for s in _sources.KERNELS.values()
            for d in CTYPES
            for w in (False, True)
        ]
        results = [j.result() for j in jobs]
    failed = [r for r in results if not r["ok"]]
    for r in results:
        state = "ok  " if r["ok"] else "FAIL"
        print(
            f"{state} {r['kernel']:<34} {r['dtype']:<8} {r['index']:<9} "
            f"regs={r['registers']} spill={r['spill_bytes']}B"
            + (f"  warnings: {len(r['warnings'])}" if r["warnings"] else "")
        )
    for r in failed:
        print(f"\n--- {r['kernel']} {r['dtype']} {r['index']}\n{r['errors']}")
    report = {
        "nvcc": version.strip().splitlines()[-1] if version else None,
        "arch": args.arch,
        "cupy_headers": include,
        "results": results,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    print(
        f"\n{len(results) - len(failed)}/{len(results)} compiled for {args.arch} ({report['nvcc']})"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
