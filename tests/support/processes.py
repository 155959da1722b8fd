"""Killing a process together with everything it started (its own Ray instance included), and nothing else.

Other people's Ray instances run on the same machine, so nothing here matches
processes by name: only the descendants of a process this test started are touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Iterator, NamedTuple


class ProcessInfo(NamedTuple):
    pid: int
    state: str  # "Z" for a zombie
    parent: int
    group: int


def _read(pid: int | str) -> ProcessInfo | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as file:
            stat = file.read()
    except OSError:
        return None  # exited while we looked
    # The command name (field 2) may hold spaces and parentheses: parse after its closing one.
    state, parent, group = stat[stat.rindex(")") + 2:].split()[:3]
    return ProcessInfo(int(pid), state, int(parent), int(group))


def _processes() -> Iterator[ProcessInfo]:
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := _read(entry)) is not None:
            yield info


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for info in _processes():
        children.setdefault(info.parent, []).append(info.pid)
    found, frontier = set(), [pid]
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in found:
                found.add(child)
                frontier.append(child)
    return found


def is_running(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    info = _read(pid)
    return info is not None and info.state != "Z"


def group_alive(process_group: int) -> bool:
    """True while a process of the group runs (zombies aside); start_new_session makes a process lead one."""
    return any(info.group == process_group and info.state != "Z" for info in _processes())


def kill_tree(process: subprocess.Popen, timeout: float = 30.0) -> set[int]:
    """SIGKILLs a process and all its descendants, as a machine losing power would; returns their pids.

    Every process in the tree is first stopped (SIGSTOP), so none can start new
    ones while the tree is collected; then all are killed at once.
    """
    tree: set[int] = set()
    pending = {process.pid}
    while pending:
        for pid in pending:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        tree |= pending
        pending = descendants(process.pid) - tree
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while any(is_running(pid) for pid in tree):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes still running after SIGKILL: {sorted(p for p in tree if is_running(p))}")
        time.sleep(0.1)
    return tree
