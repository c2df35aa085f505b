"""The command line records what it did and names the option in its one-line errors."""

from __future__ import annotations

import json
import time

import pytest

from anycnn.cli import EXIT_OK, EXIT_USAGE, main


def test_metrics_record_the_limit_used(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metrics = tmp_path / "m.json"
    argv = ["train", "--model", "dlt", "--limit", "30", "--epochs", "1", "--quiet"]
    code = main([*argv, "--metrics", str(metrics)])
    assert code == EXIT_OK, capsys.readouterr().err
    payload = json.loads(metrics.read_text())
    assert payload["limit"] == 30
    assert payload["train_size"] == 30


def test_download_to_an_impossible_folder_names_the_option(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = main(["download", "mnist", "--to", str(blocker / "x")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == EXIT_USAGE
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: anycnn download: --to {blocker / 'x'}: cannot create"), err
    assert "[Errno" not in lines[0]


def test_compile_message_and_compile_kept_out_of_the_first_epoch(tmp_path, capsys, monkeypatch):
    """A warm-up over a second (Numba compiling after an install; here a stand-in that sleeps)
    is announced with its estimate and cache folder, and finishes before train() -- so before
    the first epoch's clock starts."""
    _jit = pytest.importorskip("anycnn_numpy._jit")
    from anycnn import cli, train
    from anycnn.network import Network

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_jit, "status", lambda: (True, "stand-in"))
    monkeypatch.setattr(_jit, "cache_dir", lambda: "/stand-in/cache")
    monkeypatch.setattr(_jit, "COMPILE_SECONDS", 7)
    events = []
    say, original, fit = cli._say, Network.compute_gradients, train.train

    def slow_compile(self, x, t, *, check=True):
        if not check and not events.count("compiled"):  # the warm-up's pass
            time.sleep(1.3)  # past the 1 s after which the CLI speaks
            events.append("compiled")
        return original(self, x, t, check=check)

    def record_say(text, *, err=False):
        events.append(text)
        say(text, err=err)

    def record_train(*args, **kwargs):
        events.append("train starts")
        return fit(*args, **kwargs)

    monkeypatch.setattr(Network, "compute_gradients", slow_compile)
    monkeypatch.setattr(cli, "_say", record_say)
    monkeypatch.setattr(train, "train", record_train)
    code = main(["train", "--model", "dlt", "--backend", "cpu", "--limit", "20", "--epochs", "1"])
    assert code == EXIT_OK, capsys.readouterr().err
    message = "compiling CPU kernels once (~7 s), cached in /stand-in/cache ..."
    assert message in events, events
    done = next(i for i, e in enumerate(events) if e.startswith("  compiled in "))
    assert events.index(message) < events.index("compiled") < events.index("train starts")
    assert done < events.index("train starts")
