"""The process that runs the cases of tests/test_fuzz_files.py (issue 20), under hard limits.

Started once per test by the fuzz tests; reads one JSON command per line on stdin
(``{"argv": [...], "timeout": seconds}``), runs ``anycnn.cli.main(argv)`` in this process with its
output captured, and answers one JSON line on stdout: the exit status, stdout and stderr, the
seconds taken, the process's peak resident memory so far (KiB), and the traceback of anything
that escaped ``main`` (which the tests count as a failure). Memory is bounded by
``RLIMIT_AS`` (the first argument, in MiB) set before anything is imported, so an allocation
beyond it fails here instead of exhausting the machine; time by ``signal.alarm`` per case.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import signal
import sys
import time
import traceback


def _peak_kib() -> int:
    """This process's resident peak (KiB): VmHWM, the peak of its own address space. Not
    ru_maxrss: Linux carries the peak of the address space replaced by exec into it, so a
    worker started from a large pytest process would report that process's size."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:  # pragma: no cover - not Linux
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class _Timeout(BaseException):
    pass


def _alarm(signum, frame):
    raise _Timeout


def main() -> None:
    limit = int(sys.argv[1]) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from anycnn import cli

    signal.signal(signal.SIGALRM, _alarm)
    out = sys.stdout
    print(json.dumps({"ready": True}), file=out, flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        stdout, stderr = io.StringIO(), io.StringIO()
        escaped = None
        code = None
        began = time.perf_counter()
        signal.alarm(int(command.get("timeout", 30)))
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                code = cli.main(command["argv"])
        except _Timeout:
            escaped = "timeout"
        except BaseException:  # noqa: BLE001 - reported to the test, which fails on it
            escaped = traceback.format_exc()
        finally:
            signal.alarm(0)
        reply = {
            "code": code,
            "stdout": stdout.getvalue(),
            "stderr": stderr.getvalue(),
            "seconds": time.perf_counter() - began,
            "maxrss_kib": _peak_kib(),
            "escaped": escaped,
        }
        print(json.dumps(reply), file=out, flush=True)


if __name__ == "__main__":
    main()
