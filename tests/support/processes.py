"""Killing a process together with everything it started (its own Ray instance included), and nothing else.

Other people's Ray instances run on the same machine, so nothing here matches
processes by name: only the descendants of a process this test started are touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as file:
                stat = file.read()
        except OSError:
            continue  # exited while we looked
        # The command name (field 2) may hold spaces and parentheses: parse after its closing one.
        parent = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(parent, []).append(int(entry))
    return children


def descendants(pid: int) -> set[int]:
    children = _children_by_parent()
    found, frontier = set(), [pid]
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in found:
                found.add(child)
                frontier.append(child)
    return found


def is_running(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as file:
            stat = file.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


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
