"""`animegan train --restart`: set the workdir's previous run aside, then start over in the same workdir.

Nothing is deleted. Everything the previous run wrote (config, metrics, samples,
checkpoints with Ray's run state, the exported generator, the data index) moves
into `<workdir>/archive/<UTC time>/`, so the workdir's layout, and every tool that
reads it, always describes the current run, and old runs stay complete and
readable in their own folders (`animegan generate --checkpoint <workdir>/archive/<time>`
works on them). Input data kept in the workdir, such as the built-in demo set,
stays where it is.

Object storage cannot rename a folder: a move is a copy and a delete per object.
So the list of entries to move is written first, as `archive.json` with status
"moving"; a restart that was interrupted half way is finished by the next
`animegan train` in that workdir before anything else is written there, and
never leaves the old run split between two places. A journal is read back from
a workdir others may write to: every entry it names must be a plain name
directly in the workdir, or nothing is moved.
"""

from __future__ import annotations

import datetime
import json
import posixpath
from typing import Callable, Iterable

from animegan import storage
from animegan.workdir import LEASE, RunLayout

JOURNAL = "archive.json"


def archive_run(workdir: str, keep: Iterable[str] = (), log: Callable[[str], None] = print,
                reason: str = "--restart") -> str | None:
    """Moves every entry of the workdir except the archive and `keep` into a new archive folder.

    Returns the archive folder's URL, or None when there was nothing to set aside. `reason` says
    in the messages why the run is set aside (a sweep's PBT sets a trial's run aside too).
    """
    finish_interrupted(workdir, log)
    archive = RunLayout(workdir).archive
    # The lease is the live run's (this one's), not the previous run's.
    kept = set(keep) | {posixpath.basename(archive), LEASE}
    entries = [name for name in storage.list_dir(workdir) if name not in kept]
    if not entries:
        log(f"{reason}: {workdir} holds no previous run; starting a new one")
        return None
    for entry in entries:  # the journal's entries are checked when read back: only names that pass go in
        storage.check_relative_name(entry, f"{reason}: {workdir}", single=True)
    target = _new_archive_folder(workdir)
    journal = {"status": "moving", "entries": entries,
               "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    storage.write_text(storage.join(target, JOURNAL), json.dumps(journal, indent=2) + "\n")
    _move_entries(workdir, target, journal)
    log(f"{reason}: the previous run ({', '.join(entries)}) is now in {target}; starting over in {workdir}")
    return target


def finish_interrupted(workdir: str, log: Callable[[str], None] = print) -> None:
    """Completes any --restart that stopped half way, so the old run ends up whole in its archive folder."""
    root = RunLayout(workdir).archive
    for name in storage.list_dir(root):
        journal_url = storage.join(root, name, JOURNAL)
        if not storage.exists(journal_url):
            continue
        try:
            journal = json.loads(storage.read_text(journal_url))
        except ValueError:
            raise ValueError(f"{journal_url} is not readable JSON; move that folder out of the archive") from None
        if not isinstance(journal, dict):
            raise ValueError(f"{journal_url} is not a restart journal; move that folder out of the archive")
        if journal.get("status") == "moving":
            target = storage.join(root, name)
            log(f"Finishing an interrupted --restart: moving the rest of the previous run to {target}")
            _move_entries(workdir, target, journal)


def _move_entries(workdir: str, target: str, journal: dict) -> None:
    entries = journal.get("entries")
    if not isinstance(entries, list):
        raise ValueError(f"{storage.join(target, JOURNAL)} lists no entries to move")
    for entry in entries:  # all checked before anything moves
        storage.check_relative_name(entry, storage.join(target, JOURNAL), single=True)
    for entry in entries:
        # Already moved entries are simply absent: moving is resumable entry by entry.
        storage.move(storage.join(workdir, entry), storage.join(target, entry))
    journal = {**journal, "status": "done",
               "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    storage.write_text(storage.join(target, JOURNAL), json.dumps(journal, indent=2) + "\n")


def _new_archive_folder(workdir: str) -> str:
    """<workdir>/archive/<UTC time>, with a suffix if two restarts fall in the same second."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    archive = RunLayout(workdir).archive
    existing = set(storage.list_dir(archive))
    name, counter = stamp, 1
    while name in existing:
        counter += 1
        name = f"{stamp}-{counter}"
    return storage.join(archive, name)
