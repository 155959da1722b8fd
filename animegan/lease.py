"""One live run per workdir: a lease, taken before anything is written there and kept alive by a heartbeat.

Two runs in one workdir would resume the same checkpoints, write the same
`checkpoint-N` folders, prune each other's, interleave `metrics.jsonl` and share
a W&B run; `--restart` would move files from under the other. So the driver of
`animegan train` holds the workdir's lease for the whole run.

The lease is a sequence of small JSON objects, `<workdir>/lease/00000001.json`,
`00000002.json`, ...; the one with the highest number is the lease, and its
holder rewrites it every HEARTBEAT_SECONDS. Invariants:

- A number is claimed by creating its object only if it does not exist: on Cloud
  Storage an upload with ifGenerationMatch=0 (gcsfs's mode="create"), locally a
  hard link of a finished file, which fails if the name exists. Of any number of
  runs that try to claim the same number at once, exactly one succeeds, and the
  others then see its lease. Nothing else decides who holds the lease.
- A holder only ever writes its own number, so a heartbeat can never overwrite
  another run's lease. A holder that finds a higher number has lost the lease
  (it stalled past STALE_SECONDS and was taken over) and says so.
- Numbers only grow: a finished run marks its lease released instead of deleting
  it, and whoever claims the next number deletes the older ones.

A lease is free when it is released, when its heartbeat is older than
STALE_SECONDS (its run died without releasing it, on any machine), or at once
when its holder was a process on this machine that no longer runs (a driver
killed with SIGKILL, then the same command run again). Ages are measured against
the holder's clock as written in the lease: machines are assumed to keep time
within a minute of each other.

A run may wait for the lease instead of being refused at once (`wait_seconds`,
`animegan train --wait-for-workdir`): the retry of a job whose head node was lost
starts while the lost driver's lease still looks alive, and takes the workdir over
once that lease is released or its heartbeat is STALE_SECONDS old.

Everything read from the lease folder is untrusted: only names of the exact form
NNNNNNNN.json count, and a lease that cannot be parsed is taken over, with a warning.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from animegan import storage
from animegan.workdir import LEASE as LEASE_FOLDER
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 300.0  # ten missed heartbeats
# How often a run that waits for the lease looks again: a released lease is taken within this.
WAIT_POLL_SECONDS = 10.0
_NAME = re.compile(r"^(\d{8})\.json$")
# Claim attempts when other runs keep winning the race for the next number.
_CLAIM_ATTEMPTS = 5


class WorkdirInUse(ValueError):
    """Another live run holds the workdir (a ValueError: the command line ends with one line and exit 2).

    `holder` and `heartbeat_age` say who, when one lease was found live (None for a lost race).
    """

    def __init__(self, message: str, holder: "Holder | None" = None, heartbeat_age: float | None = None):
        super().__init__(message)
        self.holder = holder
        self.heartbeat_age = heartbeat_age


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, as written in it."""

    number: int
    record: dict[str, Any]

    @property
    def description(self) -> str:
        record = self.record
        command = f" ({record['command']})" if record.get("command") else ""
        return f"{record.get('user', '?')}@{record.get('host', '?')} pid {record.get('pid', '?')}{command}"

    def heartbeat_age(self, now: float) -> float | None:
        heartbeat = self.record.get("heartbeat")
        return now - heartbeat if isinstance(heartbeat, (int, float)) and not isinstance(heartbeat, bool) else None

    def ended_on_this_machine(self) -> bool:
        """True when the holder was a process of this machine (this boot) that no longer runs."""
        record = self.record
        if record.get("host") != socket.gethostname() or record.get("boot") != _boot_id():
            return False
        pid = record.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            return False
        started = _process_start(pid)
        # A pid that runs again but started at another time belongs to a new process.
        return started is None or (record.get("process_start") is not None and started != record["process_start"])


class WorkdirLease:
    """The lease of one workdir, held by this process: `acquire`, then `release` (or use `held`)."""

    def __init__(self, workdir: str, number: int, record: dict[str, Any], *, log: Callable[[str], None],
                 heartbeat_seconds: float):
        self.workdir = workdir
        self.number = number
        self.record = record
        self.log = log
        self.heartbeat_seconds = heartbeat_seconds
        self.lost = False
        self.made_workdir = False  # a local folder that did not exist before this lease
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return lease_url(self.workdir, self.number)

    @classmethod
    def acquire(cls, workdir: str, *, command: str = "animegan train", log: Callable[[str], None] = print,
                stale_seconds: float = STALE_SECONDS, heartbeat_seconds: float = HEARTBEAT_SECONDS,
                start_heartbeat: bool = True, wait_seconds: float = 0.0,
                poll_seconds: float = WAIT_POLL_SECONDS) -> "WorkdirLease":
        """Takes the workdir's lease, or raises WorkdirInUse naming the live holder and its heartbeat's age.

        With wait_seconds > 0, a lease held by another run is looked at again every
        poll_seconds until it is released or stale, for at most wait_seconds.
        """
        if not wait_seconds >= 0:
            raise ValueError(f"the time to wait for a workdir must be 0 s or more, not {wait_seconds:g}")
        deadline = time.monotonic() + wait_seconds
        said = False
        while True:
            try:
                return cls._acquire_once(workdir, command=command, log=log, stale_seconds=stale_seconds,
                                         heartbeat_seconds=heartbeat_seconds, start_heartbeat=start_heartbeat)
            except WorkdirInUse as refused:
                left = deadline - time.monotonic()
                if left <= 0:
                    if wait_seconds > 0:
                        raise WorkdirInUse(f"{refused}; gave up after waiting {_duration(wait_seconds)}",
                                           refused.holder, refused.heartbeat_age) from None
                    raise
                if not said and refused.holder is not None:
                    log(f"Waiting up to {_duration(wait_seconds)} for {workdir}: {refused.holder.description} holds "
                        f"it, last heartbeat {_duration(max(refused.heartbeat_age or 0.0, 0.0))} ago. Its lease is "
                        f"taken once released, or once its heartbeat is {_duration(stale_seconds)} old (its run "
                        f"has stopped then)")
                    said = True
                time.sleep(min(poll_seconds, left))

    @classmethod
    def _acquire_once(cls, workdir: str, *, command: str, log: Callable[[str], None], stale_seconds: float,
                      heartbeat_seconds: float, start_heartbeat: bool) -> "WorkdirLease":
        folder = storage.join(workdir, LEASE_FOLDER)
        new_local_folder = storage.is_local(workdir) and not os.path.exists(storage.absolute(workdir))
        for _ in range(_CLAIM_ATTEMPTS):
            current = current_holder(workdir)
            number = 1
            if current is not None:
                check_free(workdir, current, stale_seconds, log)
                number = current.number + 1
            now = time.time()
            record = {"id": uuid.uuid4().hex, "user": _user(), "host": socket.gethostname(), "boot": _boot_id(),
                      "pid": os.getpid(), "process_start": _process_start(os.getpid()), "command": command,
                      "started": now, "heartbeat": now, "released": False}
            try:
                _create_exclusively(lease_url(workdir, number), _encode(record))
            except FileExistsError:
                continue  # another run claimed this number first: look again at what it holds
            numbers = _numbers(folder)
            if numbers and numbers[-1] > number:
                # The holder read above was already superseded (a slow read that raced another run's
                # claim): this number decides nothing. Withdraw it and look again.
                storage.remove(lease_url(workdir, number))
                continue
            lease = cls(workdir, number, record, log=log, heartbeat_seconds=heartbeat_seconds)
            lease.made_workdir = new_local_folder
            for older in numbers:
                if older < number:
                    storage.remove(lease_url(workdir, older))  # superseded; the highest number decides
            if start_heartbeat:
                lease.start_heartbeat()
            return lease
        raise WorkdirInUse(f"{workdir} is being claimed by other runs at this moment; try again")

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat_until_stopped, name="animegan-lease-heartbeat", daemon=True)
        self._thread.start()

    def beat(self) -> bool:
        """Renews the heartbeat; False (once said) when another run has taken the lease over."""
        if self.lost:
            return False
        current = current_holder(self.workdir)
        if current is None or current.number != self.number or current.record.get("id") != self.record["id"]:
            self.lost = True
            taker = current.description if current is not None else "nobody"
            self.log(f"WARNING: this run lost its lease on {self.workdir} to {taker}: its heartbeat stopped for "
                     f"{STALE_SECONDS:g} s or more, and another run took the workdir over. Two runs now write there; "
                     f"stop one of them.")
            return False
        self.record = {**self.record, "heartbeat": time.time()}
        storage.write_bytes(self.url, _encode(self.record))
        return True

    def release(self) -> None:
        """Stops the heartbeat and marks the lease released, so the next run takes it at once.

        A run that wrote nothing (bad input found after the lease was taken) leaves no
        trace: when the workdir holds only this lease, the lease goes, and so does a
        local folder that the lease made.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost:
            return
        current = current_holder(self.workdir)
        if current is None or current.number != self.number or current.record.get("id") != self.record["id"]:
            return
        folder = storage.join(self.workdir, LEASE_FOLDER)
        if storage.list_dir(self.workdir) == [LEASE_FOLDER] and storage.list_dir(folder) == [f"{self.number:08d}.json"]:
            storage.remove(self.url)
            if storage.is_local(self.workdir):
                os.rmdir(storage.absolute(folder))
                if self.made_workdir:
                    os.rmdir(storage.absolute(self.workdir))
            return
        self.record = {**self.record, "heartbeat": time.time(), "released": True}
        storage.write_bytes(self.url, _encode(self.record))

    def _beat_until_stopped(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                if not self.beat():
                    return
            except Exception as error:  # noqa: BLE001 (a missed heartbeat is not worth a failed run)
                self.log(f"lease heartbeat on {self.workdir} failed ({type(error).__name__}: {error}); "
                         f"trying again in {self.heartbeat_seconds:g} s")


@contextlib.contextmanager
def held(workdir: str, **options: Any) -> Iterator[WorkdirLease]:
    """Holds the workdir's lease for a block (options as for WorkdirLease.acquire)."""
    lease = WorkdirLease.acquire(workdir, **options)
    try:
        yield lease
    finally:
        try:
            lease.release()
        except Exception as error:  # noqa: BLE001 (the run's own outcome matters more)
            lease.log(f"could not release the lease on {workdir} ({type(error).__name__}: {error}); the next "
                      f"run takes it over once its heartbeat is {_duration(STALE_SECONDS)} old")


def lease_url(workdir: str, number: int) -> str:
    return storage.join(workdir, LEASE_FOLDER, f"{number:08d}.json")


def current_holder(workdir: str) -> Holder | None:
    """The lease with the highest number, or None when the workdir has none."""
    folder = storage.join(workdir, LEASE_FOLDER)
    while True:
        numbers = _numbers(folder)
        for number in reversed(numbers):
            try:
                data = storage.read_bytes(lease_url(workdir, number))
            except FileNotFoundError:
                continue  # deleted since the listing: a higher number superseded it, so look again
            try:
                record = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                record = None
            return Holder(number, record if isinstance(record, dict) else {"unreadable": True})
        if not numbers:
            return None
        # Every listed lease went between the listing and the reads: only a claim of a higher number deletes
        # them, so the folder is never empty for good. Listing again finds it.


def _numbers(folder: str) -> list[int]:
    return sorted(int(match.group(1)) for name in storage.list_dir(folder) if (match := _NAME.match(name)))


def check_free(workdir: str, holder: Holder, stale_seconds: float = STALE_SECONDS,
               log: Callable[[str], None] = print) -> None:
    """Returns when `holder`'s lease may be taken (saying why when it was not released); else raises WorkdirInUse."""
    if holder.record.get("released") is True:
        return
    if holder.record.get("unreadable"):
        log(f"WARNING: taking over {workdir}: its lease {lease_url(workdir, holder.number)} is unreadable")
        return
    now = time.time()
    age = holder.heartbeat_age(now)
    if holder.ended_on_this_machine():
        log(f"WARNING: taking over {workdir} from {holder.description}, which no longer runs on this machine "
            f"(it ended without releasing the workdir)")
        return
    if age is None or age > stale_seconds:
        shown = "missing" if age is None else f"{_duration(age)} old"
        log(f"WARNING: taking over {workdir} from {holder.description}: its heartbeat is {shown}, so its run "
            f"has stopped (a heartbeat older than {_duration(stale_seconds)} means that)")
        return
    raise WorkdirInUse(f"{workdir} is in use by another run: {holder.description}, last heartbeat "
                       f"{_duration(max(age, 0.0))} ago; wait for it to end, or use another --workdir (a run whose "
                       f"heartbeat stops for {_duration(stale_seconds)} is taken over)", holder, age)


def _create_exclusively(url: str, data: bytes) -> None:
    """Writes a whole new object, or raises FileExistsError if `url` exists, atomically either way."""
    fs, path = storage.filesystem(url)
    if not storage.is_local(url):
        # gcsfs: one upload with ifGenerationMatch=0. Other fsspec backends check, then write.
        fs.pipe_file(path, data, mode="create")
        return
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-lease-")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.link(temporary, path)  # fails with FileExistsError if the name exists; never half written
    finally:
        os.remove(temporary)


def _encode(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, indent=2) + "\n").encode("utf-8")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid()) if hasattr(os, "getuid") else "?"


def _boot_id() -> str:
    """This machine's current boot (Linux), so a pid is only compared within one boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as file:
            return file.read().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, Linux); None when it does not run."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as file:
            stat = file.read()
    except FileNotFoundError:
        return None
    except OSError:
        stat = ""
    fields = stat[stat.rfind(")") + 2:].split() if ")" in stat else []
    if len(fields) > 19:
        if fields[0] == "Z":
            return None  # a zombie has ended
        return int(fields[19])
    # No /proc (macOS): whether the pid runs at all.
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return 0
