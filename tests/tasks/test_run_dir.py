import json
import os
import subprocess
import sys

import pytest

from tasks.run_dir import LOCK_NAME, RunLock, claim


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_claim_locks_and_releases_and_a_second_claim_is_refused(tmp_path):
    with claim(tmp_path / "run") as directory:
        holder = json.loads((directory / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(ValueError, match=rf"is in use by process {os.getpid()} on .* lock file"), \
                claim(directory):
            pass
        assert (directory / LOCK_NAME).exists()  # the refused claim left the holder's lock alone
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_a_lock_is_released_when_the_run_raises(tmp_path):
    with pytest.raises(RuntimeError), claim(tmp_path):
        raise RuntimeError("crash")
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.parametrize("holder", [
    lambda: {"pid": dead_pid(), "host": os.uname().nodename},  # killed: its process is gone
    lambda: {"pid": os.getpid(), "host": os.uname().nodename, "started_ticks": "1"},  # its id reused
    lambda: "{half written",
])
def test_a_stale_lock_is_reclaimed(tmp_path, capsys, holder):
    value = holder()
    (tmp_path / LOCK_NAME).write_text(value if isinstance(value, str) else json.dumps(value))
    with claim(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert "reclaimed the stale lock" in capsys.readouterr().err


def test_a_lock_from_another_host_is_refused_naming_it(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": 0}))
    with pytest.raises(ValueError, match="in use by process 1 on 'elsewhere' .*another host"):
        RunLock(tmp_path).acquire()


def test_a_run_is_refused_unless_resumed_or_overwritten_and_overwrite_deletes_only_its_files(tmp_path):
    for name in ("run.json", "metrics.csv", "notes.txt"):
        (tmp_path / name).write_text(name)
    (tmp_path / "best").mkdir()
    with pytest.raises(ValueError, match=r"holds a run \(run.json, metrics.csv, best\); it has no check"):
        with claim(tmp_path):
            pass
    with pytest.raises(ValueError, match="--resume, --overwrite: expected at most one"):
        with claim(tmp_path, resume=True, overwrite=True):
            pass
    with claim(tmp_path, resume=True):
        assert (tmp_path / "run.json").exists()
    with claim(tmp_path, overwrite=True):
        assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", LOCK_NAME]


def test_a_refused_claim_leaves_no_directory_behind(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="expected a directory, got the file"), claim(tmp_path / "file"):
        pass
    assert (tmp_path / "file").read_text() == "x"
