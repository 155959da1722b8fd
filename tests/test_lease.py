"""One live run per workdir (animegan/lease.py), on a local disk and in the emulator bucket.

The holders are real processes (a second Python holding the lease with its heartbeat
running) or, for the races, threads released at the same instant; the emulator
honours ifGenerationMatch as Cloud Storage does (tests/support/gcs_emulator.py).
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from animegan import storage
from animegan.cli import main as cli_main
from animegan.lease import STALE_SECONDS, Holder, WorkdirInUse, WorkdirLease, current_holder, held, lease_url
from tests.conftest import REPO


@pytest.fixture(params=["local", "gs"])
def workdir(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "run")
    return request.getfixturevalue("bucket") + "/run"


def hold_in_another_process(workdir: str) -> subprocess.Popen:
    """A real second holder: it takes the lease, beats every second and waits to be killed."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from animegan.lease import WorkdirLease
        WorkdirLease.acquire({workdir!r}, heartbeat_seconds=1.0)
        print("held", flush=True)
        time.sleep(600)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def write_lease(workdir: str, number: int, **fields) -> None:
    record = {"id": "x" * 32, "user": "someone", "host": "elsewhere", "boot": "", "pid": 4242,
              "process_start": 1, "command": "animegan train", "started": time.time(), "heartbeat": time.time(),
              "released": False, **fields}
    storage.write_text(lease_url(workdir, number), json.dumps(record))


def test_a_second_run_is_refused_while_the_first_lives_and_restart_moves_nothing(workdir, capsys):
    storage.write_text(f"{workdir}/metrics.jsonl", '{"step": 10}\n')
    holder = hold_in_another_process(workdir)
    try:
        time.sleep(2.5)  # a few heartbeats
        record = current_holder(workdir).record
        assert time.time() - record["heartbeat"] < 2.0 and record["started"] < record["heartbeat"]

        for extra in ([], ["--restart"]):
            code = cli_main(["train", "--workdir", workdir, "--steps", "2", *extra])
            error = capsys.readouterr().err
            assert code == 2 and error.count("\n") == 1, error
            assert re.fullmatch(
                rf"animegan: error: {re.escape(workdir)} is in use by another run: \S+@{re.escape(socket.gethostname())} "
                rf"pid {holder.pid} \(animegan train\), last heartbeat \d s ago; wait for it to end, or use another "
                rf"--workdir \(a run whose heartbeat stops for 5 min is taken over\)\n", error), error
        # Nothing was moved from under the live run, nothing written beside it.
        assert storage.read_text(f"{workdir}/metrics.jsonl") == '{"step": 10}\n'
        assert storage.list_dir(workdir) == ["lease", "metrics.jsonl"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()

    # Killed without releasing: on the same machine, the next run need not wait for the heartbeat to age.
    messages: list[str] = []
    lease = WorkdirLease.acquire(workdir, log=messages.append, start_heartbeat=False)
    assert messages == [f"WARNING: taking over {workdir} from {lease_holder_description(holder.pid)}, which no "
                        f"longer runs on this machine (it ended without releasing the workdir)"]
    assert lease.number == 2 and [name for name in storage.list_dir(f"{workdir}/lease")] == ["00000002.json"]


def lease_holder_description(pid: int) -> str:
    import getpass

    return f"{getpass.getuser()}@{socket.gethostname()} pid {pid} (animegan train)"


def test_a_stale_or_unreadable_lease_is_taken_over_with_a_warning(workdir):
    write_lease(workdir, 7, heartbeat=time.time() - 600)
    storage.write_text(f"{workdir}/lease/00000003.json", "{}")  # superseded long ago
    storage.write_text(f"{workdir}/lease/99999999.json.tmp", "{}")  # not a lease name: ignored
    messages: list[str] = []
    lease = WorkdirLease.acquire(workdir, log=messages.append, start_heartbeat=False)
    assert messages == [f"WARNING: taking over {workdir} from someone@elsewhere pid 4242 (animegan train): its "
                        f"heartbeat is 10 min old, so its run has stopped (a heartbeat older than 5 min means that)"]
    assert lease.number == 8
    assert storage.list_dir(f"{workdir}/lease") == ["00000008.json", "99999999.json.tmp"]
    assert current_holder(workdir).record["id"] == lease.record["id"]

    # Half a file, or no JSON object: taken over, never trusted.
    storage.write_bytes(lease_url(workdir, 9), b'{"host": "elsewh')
    messages.clear()
    assert WorkdirLease.acquire(workdir, log=messages.append, start_heartbeat=False).number == 10
    assert messages == [f"WARNING: taking over {workdir}: its lease {lease_url(workdir, 9)} is unreadable"]


def test_a_fresh_lease_of_another_machine_is_refused(workdir):
    write_lease(workdir, 1, heartbeat=time.time() - 100)
    with pytest.raises(WorkdirInUse, match=r"in use by another run: someone@elsewhere pid 4242 \(animegan train\), "
                                           r"last heartbeat 100 s ago"):
        WorkdirLease.acquire(workdir, start_heartbeat=False)
    assert STALE_SECONDS == 300


@pytest.mark.parametrize("previous", ["none", "stale"])
def test_of_runs_starting_at_the_same_instant_exactly_one_wins(workdir, previous):
    if previous == "stale":
        write_lease(workdir, 5, heartbeat=time.time() - 3600)
    runs = 6
    start = threading.Barrier(runs)
    won: list[WorkdirLease] = []
    refused: list[str] = []

    def start_a_run():
        start.wait()
        try:
            won.append(WorkdirLease.acquire(workdir, log=lambda message: None, start_heartbeat=False))
        except WorkdirInUse as error:
            refused.append(str(error))

    threads = [threading.Thread(target=start_a_run) for _ in range(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(won) == 1 and len(refused) == runs - 1, (won, refused)
    assert all("is in use by another run" in message for message in refused)
    holder = current_holder(workdir)
    assert holder.record["id"] == won[0].record["id"]
    assert holder.number == (6 if previous == "stale" else 1)


def test_a_read_that_races_another_runs_takeover_sees_the_new_holder(workdir, monkeypatch):
    # The CI failure this pins: run B lists the folder and sees the stale lease 5; before B reads it, run A
    # claims 6 and deletes 5. B must then find 6 (fresh: refused), never conclude the workdir has no lease
    # and claim 1 beside A.
    write_lease(workdir, 5, heartbeat=time.time() - 3600)
    read_bytes = storage.read_bytes
    other_run: list[WorkdirLease] = []
    raced = threading.Event()

    def read_racing_a_takeover(url):
        if url == lease_url(workdir, 5) and not raced.is_set():
            raced.set()
            other_run.append(WorkdirLease.acquire(workdir, log=lambda message: None, start_heartbeat=False))
        return read_bytes(url)

    monkeypatch.setattr(storage, "read_bytes", read_racing_a_takeover)
    with pytest.raises(WorkdirInUse, match="is in use by another run"):
        WorkdirLease.acquire(workdir, log=lambda message: None, start_heartbeat=False)
    assert other_run[0].number == 6
    assert storage.list_dir(f"{workdir}/lease") == ["00000006.json"]
    assert current_holder(workdir).record["id"] == other_run[0].record["id"]


def test_a_holder_that_was_taken_over_says_so_and_leaves_the_new_lease_alone(workdir):
    storage.write_text(f"{workdir}/metrics.jsonl", "")  # the runs write there: their leases stay, released
    first_messages: list[str] = []
    first = WorkdirLease.acquire(workdir, log=first_messages.append, start_heartbeat=False)
    assert first.beat()
    # The first run stalls: to a second run its heartbeat looks too old (stale_seconds=0 here).
    time.sleep(0.05)
    second_messages: list[str] = []
    second = WorkdirLease.acquire(workdir, log=second_messages.append, stale_seconds=0, start_heartbeat=False)
    assert second.number == 2 and "heartbeat is 0 s old" in second_messages[0]

    assert not first.beat()
    assert first_messages == [f"WARNING: this run lost its lease on {workdir} to {Holder(2, second.record).description}: "
                              f"its heartbeat stopped for 300 s or more, and another run took the workdir over. Two "
                              f"runs now write there; stop one of them."]
    assert not first.beat() and len(first_messages) == 1  # said once
    first.release()  # leaves the second run's lease as it is
    assert current_holder(workdir).record == second.record

    second.release()
    holder = current_holder(workdir)
    assert holder.number == 2 and holder.record["released"] is True
    messages: list[str] = []
    with held(workdir, log=messages.append) as third:
        assert third.number == 3 and messages == []  # a released lease is taken without a word
    assert current_holder(workdir).record["released"] is True


def test_a_run_that_wrote_nothing_leaves_no_trace(workdir):
    # Bad input found after the lease was taken (the command line's checks of --data, say).
    with pytest.raises(ValueError, match="no such data"):
        with held(workdir, log=lambda message: None):
            raise ValueError("no such data")
    assert storage.list_dir(workdir) == [] and not storage.exists(workdir)


# ------------------------------------------------------------------ waiting for the workdir (a retried job)

def test_a_waiting_run_takes_over_once_the_dead_holders_heartbeat_is_stale(workdir):
    # A driver on a lost head node: its lease looks alive for a while yet (here 4 s instead of 5 min).
    write_lease(workdir, 3, heartbeat=time.time() - 2.0)
    messages: list[str] = []
    started = time.monotonic()
    lease = WorkdirLease.acquire(workdir, log=messages.append, stale_seconds=4, wait_seconds=30, poll_seconds=0.25,
                                 start_heartbeat=False)
    waited = time.monotonic() - started
    assert lease.number == 4 and current_holder(workdir).record["id"] == lease.record["id"]
    assert 1.5 <= waited < 15, waited  # until the heartbeat was 4 s old, not the whole 30 s
    assert messages[0] == (f"Waiting up to 30 s for {workdir}: someone@elsewhere pid 4242 (animegan train) holds it, "
                           f"last heartbeat 2 s ago. Its lease is taken once released, or once its heartbeat is 4 s "
                           f"old (its run has stopped then)")
    assert len(messages) == 2 and messages[1].startswith(f"WARNING: taking over {workdir} from someone@elsewhere")


def test_a_waiting_run_takes_a_released_lease_at_once_and_gives_up_on_a_live_one(workdir):
    storage.write_text(f"{workdir}/metrics.jsonl", "")  # the first run wrote there: its lease stays, released
    first = WorkdirLease.acquire(workdir, log=lambda message: None, heartbeat_seconds=0.5)
    with pytest.raises(WorkdirInUse, match=r"in use by another run: .*, last heartbeat 0 s ago; wait for it to end, "
                                           r"or use another --workdir \(a run whose heartbeat stops for 5 min is "
                                           r"taken over\); gave up after waiting 2 s$"):
        WorkdirLease.acquire(workdir, log=lambda message: None, wait_seconds=2, poll_seconds=0.25,
                             start_heartbeat=False)

    releaser = threading.Timer(1.0, first.release)
    releaser.start()
    messages: list[str] = []
    started = time.monotonic()
    second = WorkdirLease.acquire(workdir, log=messages.append, wait_seconds=60, poll_seconds=0.25,
                                  start_heartbeat=False)
    releaser.join()
    assert second.number == 2 and time.monotonic() - started < 10
    assert len(messages) == 1 and messages[0].startswith(f"Waiting up to 60 s for {workdir}: ")  # no takeover warning


def test_train_waits_for_the_workdir_only_when_told_and_refuses_a_negative_wait(workdir, capsys):
    write_lease(workdir, 1, heartbeat=time.time())
    started = time.monotonic()
    code = cli_main(["train", "--workdir", workdir, "--steps", "2", "--wait-for-workdir", "1.5"])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and time.monotonic() - started >= 1.5
    assert error.endswith("; gave up after waiting 2 s\n") and "in use by another run: someone@elsewhere" in error

    assert cli_main(["train", "--workdir", workdir, "--wait-for-workdir", "-1"]) == 2
    assert capsys.readouterr().err == "animegan: error: --wait-for-workdir must be 0 or more seconds, not -1\n"
