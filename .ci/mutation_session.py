"""One pytest session for the whole mutation campaign (tests/MUTATION.md, "How it runs").

mutmut 3's fork runner starts ``pytest.main`` afresh in every forked child: it parses the options,
loads the plugins and conftest, collects every test file the mutant's tests live in (all their
parametrised cases, to pick a few) and sets the session fixtures up again, per mutant. On this
suite that start-up, not the tests, was most of a mutant's time (0.84 mutants/s on one worker).

Here one session collects the selection once, in the main thread, and runs mutmut's statistics
run there, keeping the session-scoped fixtures set up (and Numba's kernels compiled) afterwards.
Each mutant's child is forked from that session and runs its tests' items through pytest's own
``pytest_runtest_protocol`` (fixtures, marks, skips, xfail and warning filters as in any run),
fastest first, stopping at the first failure, as mutmut's ``pytest -x`` did.

mutmut's own loop (generation, statistics bookkeeping, scheduling, timeouts, results) runs
unchanged in a second thread, and asks the main thread for each piece of pytest work; only its
runner (``get_mutant_runner``) is this one.

A child starts from the state the statistics run left (every selected test run once), not from a
fresh import, so a test that depends on running first could fail on unmutated code and "kill"
mutants that are not wrong: ``verify`` (``.ci/mutation.py verify``) reruns, with no mutant
active, each distinct sequence of tests that ended in a kill, in a child forked the same way, and
reports every one that fails.
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import queue
import resource
import sys
import threading
import traceback
from datetime import datetime
from pathlib import Path
from time import process_time

import mutmut.__main__ as mutmut_main
import pytest
from mutmut.configuration import config
from mutmut.mutation import trampoline
from mutmut.runners.harness import ListAllTestsResult
from mutmut.state import state
from mutmut.utils.format_utils import strip_prefix
from mutmut.workers.isolation import ForkRunner, MutantResult, RunningWorker
from mutmut.workers.timeout import register_timeout

INTERNAL_ERROR = 35  # mutmut's "suspicious": a failure of this machinery, never counted as a kill
KILLERS = Path("mutants/mutmut-killers.txt")  # "mutant<TAB>test<TAB>tests run before it, ;-joined"
STATS_QUEUE = Path("mutants/mutmut-stats-queue")  # the next test file's index, shared by the shards
STATS_SHARD = "mutants/mutmut-stats-shard-{}.json"  # a forked shard's statistics, for the main one


def _take(path: Path) -> int:
    """The next number of a counter kept in ``path`` (0 first), under an exclusive lock: the
    shards of the statistics run take the test files one at a time from one list."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        taken = int(os.read(fd, 32) or b"0")
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, str(taken + 1).encode())
        return taken
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class _Upto:
    """Stands for "the next item" in ``SetupState.teardown_exact``: keeps only ``chain`` set up."""

    def __init__(self, chain):
        self._chain = chain

    def listchain(self):
        return self._chain


class _Stats:
    """mutmut's statistics collector (``PytestRunner.run_stats``): which mangled functions each
    test reached (the trampolines record them while the mutant under test is "stats") and each
    test's call duration."""

    def pytest_runtest_logstart(self, nodeid, location):
        state().duration_by_test[nodeid] = 0

    def pytest_runtest_teardown(self, item, nextitem):
        for function in state()._stats:
            name = strip_prefix(item.nodeid, prefix="mutants/")
            state().tests_by_mangled_function_name[function].add(name)
        state()._stats.clear()

    def pytest_runtest_makereport(self, item, call):
        if call.when == "call":
            state().duration_by_test[item.nodeid] += call.duration


class Server:
    """The main thread's side: the pytest session, and the work mutmut's thread asks of it."""

    def __init__(self) -> None:
        self.root = Path.cwd()
        self.requests: queue.Queue = queue.Queue()
        self.session = None
        self.items: dict = {}
        self.failed_at: str | None = None
        self._start_reply: queue.Queue | None = None
        self.shards = 1  # processes of the statistics run (Note [Statistics in shards])
        self.ran: set[str] = set()  # the tests this process has run (the mutants' children's state)

    # -- asked from mutmut's thread -------------------------------------------------------------
    def call(self, fn, *args):
        reply: queue.Queue = queue.Queue(maxsize=1)
        self.requests.put((fn, args, reply))
        ok, value = reply.get()
        if not ok:
            raise value
        return value

    def start(self) -> None:
        if self.session is None:
            self.call("start")

    # -- the main thread ------------------------------------------------------------------------
    def serve(self) -> None:
        """Until mutmut's thread is done: start the session when asked, then serve inside it."""
        while True:
            fn, args, reply = self.requests.get()
            if fn == "exit":
                return
            if fn == "start":
                self._start_reply = reply
                self._run_session()
                if self._start_reply is not None:  # the session never reached its test loop
                    self._start_reply.put((False, RuntimeError("pytest collection failed")))
                    self._start_reply = None
                continue
            self._answer(fn, args, reply)

    def _answer(self, fn, args, reply) -> None:
        try:
            reply.put((True, fn(*args)))
        except BaseException as error:  # handed to the asking thread
            traceback.print_exc()
            reply.put((False, error))

    def _run_session(self) -> None:
        cfg = config()
        args = ["--rootdir=.", "--tb=native", "-q", "--capture=sys"]
        args += ["-p", "no:randomly", "-p", "no:random-order"]
        args += cfg.pytest_add_cli_args_test_selection + cfg.pytest_add_cli_args
        os.chdir(self.root / "mutants")
        try:
            pytest.main(args, plugins=[self])
        finally:
            os.chdir(self.root)

    @property
    def mutants_dir(self) -> Path:
        return self.root / "mutants"

    # pytest hooks (this object is a plugin of the session)
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session):
        if session.testsfailed:  # collection errors: let pytest report them
            return None
        self.session = session
        self.items = {strip_prefix(item.nodeid, prefix="mutants/"): item for item in session.items}
        chains = [item.listchain() for item in session.items]
        common = []
        for nodes in zip(*chains, strict=False):
            if any(node is not nodes[0] for node in nodes):
                break
            common.append(nodes[0])
        self._common = common  # the nodes every item descends from: the session and its folders
        os.chdir(self.root)
        self._start_reply.put((True, None))
        self._start_reply = None
        while True:
            fn, args, reply = self.requests.get()
            if fn == "exit":
                self.requests.put((fn, args, reply))  # for serve(), once pytest has finished
                return True
            self._answer(fn, args, reply)

    def pytest_runtest_logreport(self, report):
        if report.failed and self.failed_at is None:
            self.failed_at = report.nodeid

    # -- running items --------------------------------------------------------------------------
    def _run(self, items, keep_session: bool) -> str | None:
        """Run ``items`` in order through pytest's protocol; stop at the first failure and return
        its node id (None when all passed). ``keep_session``: leave the fixtures shared by every
        item (session scope) set up afterwards, for the children forked later."""
        self.failed_at = None
        for index, item in enumerate(items):
            if index + 1 < len(items):
                nextitem = items[index + 1]
            else:
                nextitem = items[0] if keep_session else None
            item.ihook.pytest_runtest_protocol(item=item, nextitem=nextitem)
            if self.failed_at is not None:
                break
        if keep_session:
            self.session._setupstate.teardown_exact(_Upto(self._common))
            self.ran.update(strip_prefix(item.nodeid, prefix="mutants/") for item in items)
        return self.failed_at

    def warm(self, tests: list[str] | None) -> int:
        """Note [A warm parent]: run here, in the process the mutants' children are forked from,
        the fastest test of each mutated function that ``tests`` reach (all, if None) and that
        this process has not run yet, so that every child starts with what the function's tests
        need already imported, set up and compiled (Numba compiles a kernel at its first call;
        a child that does it loses seconds per mutant, and timed out). After statistics loaded
        from an earlier run, this process has run nothing; after a run in shards, only its own
        share. Returns 1 if one of them fails on the original code (mutmut's "clean run" stops
        the campaign then), 0 otherwise."""
        selected = None if not tests else set(tests)
        durations = state().duration_by_test
        warm = set()
        for reaching in state().tests_by_mangled_function_name.values():
            candidates = [t for t in reaching if t in self.items]
            if selected is not None:
                candidates = [t for t in candidates if t in selected]
            if candidates and not self.ran.intersection(candidates):
                warm.add(min(candidates, key=lambda t: (durations.get(t, 0.0), t)))
        items = [item for name, item in self.items.items() if name in warm]  # collection order
        print(f"    warming the main process: {len(items)} tests", file=sys.__stderr__)
        os.chdir(self.mutants_dir)
        try:
            failed = self._run(items, keep_session=True) if items else None
        finally:
            os.chdir(self.root)
        if failed:
            print(f"fails on the original code: {failed}", file=sys.__stderr__)
        return 1 if failed else 0

    def run_stats(self, tests: list[str]) -> int:
        """mutmut's statistics run: every selected test once, on the original code, recording
        which mutated functions each reaches and how long it takes (``_Stats``).

        Note [Statistics in shards]: the run is one process's work, and it was the longest step
        of a campaign (about 22 min on the loaded machine). It is cut by test file, the way
        pytest-xdist's ``--dist loadfile`` cuts a suite: ``self.shards`` processes (mutmut's
        ``--max-children``: the main one and forks of it made after collection) take the files
        one at a time from one list, the files with most tests first, so that the shards end
        together; a forked shard hands its records to the main one in a JSON file. The main
        process keeps the session fixtures it set up, as before; what only a forked shard
        compiled with Numba is in Numba's file cache (``cache=True``) for the mutants' children.
        A test that fails stops its shard, and the run fails, as before."""
        items = [self.items[t] for t in tests] if tests else list(self.session.items)
        by_file: dict[str, list] = {}
        for item in items:
            by_file.setdefault(item.nodeid.split("::")[0], []).append(item)
        groups = sorted(by_file.values(), key=len, reverse=True)
        shards = max(1, min(self.shards, len(groups)))
        stats = _Stats()
        manager = self.session.config.pluginmanager
        manager.register(stats)
        os.chdir(self.mutants_dir)
        queue_path = self.root / STATS_QUEUE
        queue_path.unlink(missing_ok=True)
        children = {}
        try:
            for shard in range(1, shards):
                pid = os.fork()
                if pid == 0:
                    self._stats_shard(shard, groups, queue_path)  # never returns
                children[pid] = shard
            failed = self._run_taken(groups, queue_path)
        finally:
            os.chdir(self.root)
            manager.unregister(stats)
        for pid, shard in children.items():
            _, status = os.waitpid(pid, 0)
            path = self.root / STATS_SHARD.format(shard)
            if os.waitstatus_to_exitcode(status) != 0 or not path.exists():
                failed = failed or f"(statistics shard {shard} ended with status {status})"
                continue
            record = json.loads(path.read_text())
            path.unlink()
            state().duration_by_test.update(record["duration_by_test"])
            for name, found in record["tests_by_mangled_function_name"].items():
                state().tests_by_mangled_function_name[name].update(found)
            for name, callers in record["function_dependencies"].items():
                state().function_dependencies[name].update(callers)
            failed = failed or record["failed"]
        if failed:
            print(f"failed in the statistics run: {failed}", file=sys.__stderr__)
        return 1 if failed else 0

    def _run_taken(self, groups: list[list], queue_path: Path) -> str | None:
        """Run the groups of tests this process takes from the shared counter, until none is left
        or a test fails (its node id is returned)."""
        while (index := _take(queue_path)) < len(groups):
            failed = self._run(groups[index], keep_session=True)
            if failed:
                return failed
        return None

    def _stats_shard(self, shard: int, groups: list[list], queue_path: Path) -> None:
        """A forked shard of the statistics run: run the groups it takes, write its records
        (STATS_SHARD) and exit."""
        code = INTERNAL_ERROR
        try:
            state().duration_by_test.clear()
            state().tests_by_mangled_function_name.clear()
            state().function_dependencies.clear()
            failed = self._run_taken(groups, queue_path)
            record = {
                "failed": failed,
                "duration_by_test": state().duration_by_test,
                "tests_by_mangled_function_name": {
                    name: sorted(found)
                    for name, found in state().tests_by_mangled_function_name.items()
                },
                "function_dependencies": {
                    name: sorted(callers) for name, callers in state().function_dependencies.items()
                },
            }
            path = self.root / STATS_SHARD.format(shard)
            path.with_suffix(".tmp").write_text(json.dumps(record))
            path.with_suffix(".tmp").rename(path)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)

    def fork(
        self,
        mutant_name: str,
        tests: list[str] | None,
        cpu_time_limit: int | None,
        in_order: bool = False,
    ) -> int:
        """A child that runs ``tests`` (all items if None) with ``mutant_name`` active, fastest
        first (or in the order given), and exits 1 at the first failure, 0 if all pass
        (INTERNAL_ERROR otherwise)."""
        pid = os.fork()
        if pid:
            return pid
        code = INTERNAL_ERROR
        try:
            trampoline.set_mutant_under_test(mutant_name)
            os.chdir(self.mutants_dir)
            if cpu_time_limit is not None:
                limit = cpu_time_limit + int(process_time())
                resource.setrlimit(resource.RLIMIT_CPU, (limit, limit + 1))
            if not config().debug:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.dup2(devnull, 2)
            if tests is None:
                items = list(self.session.items)
            elif in_order:
                items = [self.items[name] for name in tests]
            else:
                durations = state().duration_by_test
                ordered = sorted(tests, key=lambda name: durations.get(name, 0.0))
                items = [self.items[name] for name in ordered]
            failed = self._run(items, keep_session=False)
            if failed and mutant_name and mutant_name not in ("fail", ""):
                ran = [item.nodeid for item in items[: [i.nodeid for i in items].index(failed)]]
                line = f"{mutant_name}\t{failed}\t{';'.join(ran)}\n"
                fd = os.open(self.root / KILLERS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                os.write(fd, line.encode())
                os.close(fd)
            code = 1 if failed else 0
        except BaseException:
            try:
                with open(self.root / "mutants" / "mutmut-internal-errors.txt", "a") as log:
                    log.write(f"{mutant_name}\n{traceback.format_exc()}\n")
            except BaseException:
                pass
        finally:
            os._exit(code)

    def fork_and_wait(self, mutant_name: str, tests: list[str] | None, in_order=False) -> int:
        pid = self.fork(mutant_name, tests, None, in_order)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)


class SessionRunner(ForkRunner):
    """mutmut's fork runner, with the pytest work done by the Server's session."""

    def __init__(self, server: Server, max_workers: int) -> None:
        super().__init__(max_workers=max_workers, test_runner=None, debug=config().debug)
        self.server = server
        server.shards = max_workers
        server.start()

    def submit(self, mutant_name, tests, cpu_time_limit, estimated_time) -> None:
        if not tests:
            self._no_tests_results.append(MutantResult(mutant_name, 33, 0.0))
            return
        # in the order given: .ci/mutation.py chose it (Note [Killers first])
        pid = self.server.call(self.server.fork, mutant_name, list(tests), cpu_time_limit, True)
        cfg = config()
        wall_time_limit = (estimated_time + cfg.timeout_constant) * cfg.timeout_multiplier
        register_timeout(pid=pid, timeout_s=wall_time_limit)
        self._running[pid] = RunningWorker(mutant_name, datetime.now(), estimated_time)

    def shutdown(self) -> None:
        while self._running:
            try:
                self.wait_for_result()
            except ChildProcessError:
                break
        gc.unfreeze()

    def collect_stats(self, tests) -> int:
        return self.server.call(self.server.run_stats, list(tests or []))

    def run_clean_tests(self, tests) -> int:
        # Note [A warm parent]; the kills are checked on the original code after the run
        # (verify_kills), so mutmut's whole clean run in a child is not needed before it.
        return self.server.call(self.server.warm, list(tests) or None)

    def run_forced_fail(self) -> int:
        return self.server.call(self.server.fork_and_wait, "fail", None)

    def list_all_tests(self) -> ListAllTestsResult:
        return ListAllTestsResult(ids=set(self.server.items))


def verify_kills(server: Server, children: int = 2) -> int:
    """Rerun, with no mutant active, the sequences of tests that killed mutants in this run (from
    KILLERS), each in a child forked from the same session as the mutants were. A sequence that
    is the beginning of a longer one is checked by the longer one. When a sequence fails on the
    original code, the mutants it (or a beginning of it) killed were not killed by their own
    doing: they are set back to "suspicious" (not detected) and listed. Returns their number."""
    if not KILLERS.exists() or server.session is None:
        return 0
    by_sequence: dict[tuple[str, ...], list[str]] = {}
    for line in KILLERS.read_text().splitlines():
        mutant, killer, before = line.split("\t")
        sequence = (*[name for name in before.split(";") if name], killer)
        sequence = tuple(strip_prefix(name, prefix="mutants/") for name in sequence)
        by_sequence.setdefault(sequence, []).append(mutant)
    covered: set[tuple[str, ...]] = set()
    to_run = []
    for sequence in sorted(by_sequence, key=len, reverse=True):
        if sequence not in covered:
            to_run.append(sequence)
            covered.update(sequence[:n] for n in range(1, len(sequence) + 1))
    print(
        f"verifying the {len(by_sequence)} distinct test sequences that killed mutants: "
        f"{len(to_run)} runs on the original code"
    )
    failing = []
    running: dict[int, tuple[str, ...]] = {}
    pending = list(to_run)
    while pending or running:
        while pending and len(running) < children:
            sequence = pending.pop()
            running[server.call(server.fork, "", list(sequence), None, True)] = sequence
        pid, status = os.wait()
        sequence = running.pop(pid)
        if os.waitstatus_to_exitcode(status) != 0:
            print(f"fails on the original code: {' -> '.join(sequence)}")
            failing.append(sequence)
    bogus = [
        mutant
        for sequence, mutants in by_sequence.items()
        if any(run[: len(sequence)] == sequence for run in failing)
        for mutant in mutants
    ]
    if bogus:
        _, by_path = mutmut_main.collect_source_file_mutation_data(mutant_names=())
        for data in by_path.values():
            changed = [name for name in bogus if name in data.exit_code_by_key]
            for name in changed:
                data.exit_code_by_key[name] = INTERNAL_ERROR
            if changed:
                data.save()
        print(f"{len(bogus)} kills were not the mutants' doing: marked suspicious")
    else:
        print("    every killing sequence passes on the original code")
    return len(bogus)


def run_mutmut_with_session(argv: list[str]) -> int:
    """Run mutmut's command line ``argv`` in a second thread, serving its pytest work here; after
    a run, verify its kills (verify_kills)."""
    server = Server()
    KILLERS.unlink(missing_ok=True)

    def get_mutant_runner(max_workers: int = 1):
        return SessionRunner(server, max_workers)

    mutmut_main.get_mutant_runner = get_mutant_runner
    outcome = {"code": 1}

    def body() -> None:
        try:
            mutmut_main.cli.main(args=argv, prog_name="mutmut", standalone_mode=False)
            outcome["code"] = 0
            if argv[:1] == ["run"]:
                verify_kills(server)
        except SystemExit as stop:
            outcome["code"] = stop.code if isinstance(stop.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            server.requests.put(("exit", (), None))

    thread = threading.Thread(target=body, name="mutmut")
    thread.start()
    server.serve()
    thread.join()
    return outcome["code"]
