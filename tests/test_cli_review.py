"""The command line records what it did and names the option in its one-line errors."""

from __future__ import annotations

import json

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
