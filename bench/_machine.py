"""What machine a benchmark ran on: shared by bench/ops.py and bench/train.py."""

from __future__ import annotations

import datetime
import importlib
import os
import platform
import re
from pathlib import Path
from typing import Any

import numpy as np


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_slug() -> str:
    """A short name for the machine: the CPU model's words and the core count (amd-epyc-2c)."""
    words = re.sub(r"\(.*?\)|@.*$|\b(processor|cpu|\d+-core)\b", " ", cpu_model(), flags=re.I)
    slug = "-".join(re.findall(r"[a-z0-9]+", words.lower())[:4]) or "cpu"
    return f"{slug}-{os.cpu_count()}c"


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def machine_info(backend_name: str, array_module: str | None = None) -> dict[str, Any]:
    """Date, CPU, library versions, BLAS, thread settings and load: beside every figure."""
    import scipy

    import anycnn

    try:
        blas = np.__config__.CONFIG["Build Dependencies"]["blas"]
        blas_name = f"{blas.get('name')} {blas.get('version')}"
    except (AttributeError, KeyError, TypeError):
        blas_name = "unknown"
    info = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "slug": machine_slug(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "blas": blas_name,
        "anycnn": anycnn.__version__,
        "backend": backend_name,
        "load_average_at_start": load_average(),
        "threads_env": {
            k: os.environ[k]
            for k in (
                "OMP_NUM_THREADS",
                "OPENBLAS_NUM_THREADS",
                "MKL_NUM_THREADS",
                "ANYCNN_NUMBA",
                "ANYCNN_NUM_THREADS",
                "ANYCNN_SPIN_US",
            )
            if k in os.environ
        },
    }
    if array_module is not None:
        library = importlib.import_module(array_module)
        info["backend_library"] = f"{array_module} {getattr(library, '__version__', '?')}"
    if backend_name == "numpy":  # Note [Kernel gradient as dot products]: on with numba
        from anycnn_numpy import _jit

        try:
            import numba

            numba_version = numba.__version__
        except ImportError:
            numba_version = None
        info["numba"] = numba_version
        info["numba_kernels"] = _jit.kernel_grad_sum is not None
    return info
