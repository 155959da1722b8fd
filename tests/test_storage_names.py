"""Names read from storage never leave their folder: a checkpoint's state.json, a pack's manifest and
shard records, and a --restart journal (archive.json) are written by whoever can write to a shared
workdir, and each name they list is checked before anything is fetched, written or moved. Every case
runs on a local folder and in a bucket of the GCS emulator."""

from __future__ import annotations

import io
import json
import tempfile
import uuid

import pytest

from animegan import storage
from animegan.archive import JOURNAL, finish_interrupted
from animegan.checkpoint import CorruptCheckpoint, download, fetch_latest
from animegan.data.packing import PackProgress, pack, record_name
from animegan.data.sources import open_source
from tests.support.fake_checkpoints import write_checkpoint_files
from tests.support.images import write_folder

WHERE = ["local", "gs"]


def base_url(where: str, tmp_path, request) -> str:
    """A folder for this test: local, or in the emulator (under a fresh prefix: the bucket
    fixture's name is cut to 50 characters, so parametrized cases share a bucket)."""
    if where == "local":
        return str(tmp_path / "work")
    return f"{request.getfixturevalue('bucket')}/{uuid.uuid4().hex[:8]}/work"


@pytest.mark.parametrize("name", ["generator.weights.h5", "a/b.png", "checkpoint-00000010", "shard-00000.tar",
                                  "données.json", "a b"])
def test_plain_relative_names_are_accepted(name):
    assert storage.relative_name_problem(name) is None
    assert storage.join("gs://bucket/run", name) == f"gs://bucket/run/{name}"


@pytest.mark.parametrize("name, problem", [
    ("", "is empty"),
    ("/etc/passwd", "is an absolute path"),
    ("../outside", "has an empty, '.' or '..' part"),
    ("a/../../outside", "has an empty, '.' or '..' part"),
    ("a//b", "has an empty, '.' or '..' part"),
    ("./a", "has an empty, '.' or '..' part"),
    ("a/", "has an empty, '.' or '..' part"),
    ("..\\outside", "holds a backslash"),
    ("C:evil", "holds a colon"),
    ("gs://other-bucket/x", "holds a colon"),
    ("zip://x::file:///etc/passwd", "holds a colon"),
    ("a\x00b", "holds a control character"),
    ("line\nbreak", "holds a control character"),
    ("~/.bashrc", "starts with ~"),
    (7, "is a int, not a name"),
])
def test_names_that_could_leave_their_folder_are_refused_with_the_reason(name, problem):
    assert problem in storage.relative_name_problem(name)
    with pytest.raises(ValueError) as error:
        storage.check_relative_name(name, "gs://b/run/state.json")
    assert str(error.value) == (f"gs://b/run/state.json names {name!r}, which "
                                f"{storage.relative_name_problem(name)}: refusing to use it")
    assert "\n" not in str(error.value).replace(repr(name), "")


def test_a_single_name_must_be_directly_in_its_folder():
    assert storage.relative_name_problem("a/b", single=True) == "is not directly in its folder"


@pytest.mark.parametrize("base", ["gs://bucket/run", "/srv/run"])
@pytest.mark.parametrize("part", ["/tmp/elsewhere", "../elsewhere", "x/../../elsewhere"])
def test_join_refuses_a_part_that_would_replace_or_climb_out_of_its_base(base, part):
    # Before: posixpath.join("gs://bucket/run", "/tmp/elsewhere") was the local path "/tmp/elsewhere".
    with pytest.raises(ValueError, match=f"cannot join {part!r} onto {base}"):
        storage.join(base, part)


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture
def private_tempdir(tmp_path, monkeypatch):
    """Checkpoints are fetched into a temp folder: one inside tmp_path, so an escape lands where we look."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("kind", ["climbing", "absolute"])
def test_a_checkpoint_naming_a_file_outside_its_folder_is_refused_before_anything_is_fetched(
        where, kind, tmp_path, request, private_tempdir):
    root = base_url(where, tmp_path, request) + "/checkpoints"
    payload = b"#!/bin/sh\necho owned\n"
    escaped = private_tempdir / "owned.sh"  # where "../owned.sh" from inside the fetch folder lands
    name = "../owned.sh" if kind == "climbing" else str(tmp_path / "owned.sh")
    write_checkpoint_files(f"{root}/checkpoint-00000010", 10, {"generator.weights.h5": b"good weights"})
    hostile = f"{root}/checkpoint-00000020"
    # The payload sits where the name points, so the listed size checks out.
    write_checkpoint_files(hostile, 20, {"generator.weights.h5": b"weights"},
                           listed={"generator.weights.h5": b"weights", name: payload})
    if kind == "climbing":
        storage.write_bytes(f"{root}/owned.sh", payload)

    messages: list[str] = []
    url, local = fetch_latest(root, log=messages.append)
    assert url == f"{root}/checkpoint-00000010"
    assert messages == [f"skipping checkpoint {hostile}: state.json names the file {name!r}, which "
                        f"{storage.relative_name_problem(name)}: refusing the checkpoint"]
    with pytest.raises(CorruptCheckpoint, match="refusing the checkpoint"):
        download(hostile)
    assert not escaped.exists()
    assert kind == "climbing" or not (tmp_path / "owned.sh").exists()


# ----------------------------------------------------------------------------- packs


@pytest.fixture
def packed(tmp_path, request):
    """A real pack of 8 images, local or in the emulator bucket; yields its folder URL."""
    def make(where: str) -> str:
        write_folder(tmp_path / "raw", 8)
        folder = base_url(where, tmp_path, request) + "/packed"
        pack(str(tmp_path / "raw"), folder, log=lambda *_: None, progress=PackProgress(8, stream=io.StringIO()))
        return folder
    return make


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("shard_name", ["../shard-00000.tar", "/etc/passwd", "gs://other-bucket/shard-00000.tar",
                                        "sub/shard-00000.tar"])
def test_a_pack_manifest_naming_a_shard_outside_the_pack_is_refused(where, shard_name, packed):
    folder = packed(where)
    manifest_url = f"{folder}/manifest.json"
    manifest = json.loads(storage.read_text(manifest_url))
    manifest["shards"][0]["name"] = shard_name
    storage.write_text(manifest_url, json.dumps(manifest))
    with pytest.raises(ValueError) as error:
        open_source(folder)
    problem = storage.relative_name_problem(shard_name, single=True)
    assert str(error.value) == f"{manifest_url} names {shard_name!r}, which {problem}: refusing to use it"


@pytest.mark.parametrize("where", WHERE)
def test_a_shard_record_naming_a_file_outside_the_pack_stops_a_resumed_pack(where, packed, tmp_path):
    folder = packed(where)
    storage.remove(f"{folder}/manifest.json")  # an unfinished pack: its shard records are read back
    record_url = f"{folder}/{record_name('shard-00000.tar')}"
    record = json.loads(storage.read_text(record_url))
    record["name"] = "../../escape.tar"
    storage.write_text(record_url, json.dumps(record))
    with pytest.raises(ValueError, match=r"names '\.\./\.\./escape\.tar', which has an empty, '\.' or '\.\.' part"):
        pack(str(tmp_path / "raw"), folder, log=lambda *_: None, progress=PackProgress(8, stream=io.StringIO()))


# ----------------------------------------------------------------------------- --restart journals


@pytest.mark.parametrize("where", WHERE)
def test_a_restart_journal_naming_an_entry_outside_the_workdir_moves_nothing(where, tmp_path, request):
    workdir = base_url(where, tmp_path, request)
    outside = workdir.rsplit("/", 1)[0] + "/precious.txt"  # a sibling of the workdir
    storage.write_text(outside, "someone else's file")
    storage.write_text(f"{workdir}/metrics.jsonl", "{}\n")
    journal_url = f"{workdir}/archive/20260101-000000/{JOURNAL}"
    storage.write_text(journal_url, json.dumps({"status": "moving", "entries": ["metrics.jsonl", "../precious.txt"]}))
    with pytest.raises(ValueError) as error:
        finish_interrupted(workdir, log=lambda *_: None)
    assert str(error.value) == (f"{journal_url} names '../precious.txt', which has an empty, '.' or '..' part: "
                                f"refusing to use it")
    assert storage.read_text(outside) == "someone else's file"
    assert storage.exists(f"{workdir}/metrics.jsonl")  # checked before anything moved


# ----------------------------------------------------------------------------- data listings


@pytest.mark.parametrize("where", WHERE)
def test_a_data_index_listing_files_outside_the_source_reads_none_of_them(where, tmp_path, request):
    from animegan.data.pipeline import ReadStats, encoded_images

    base = base_url(where, tmp_path, request)
    folder = base + "/faces"
    write_folder(tmp_path / "faces", 4)
    for path in sorted((tmp_path / "faces").iterdir()):
        storage.write_bytes(f"{folder}/{path.name}", path.read_bytes())
    source = open_source(folder)
    items = source.list_items()
    secret = base + "/secret.png"  # beside the source
    storage.write_bytes(secret, (tmp_path / "faces" / "00000.png").read_bytes())
    _, secret_path = storage.filesystem(secret)
    # data-index.json is read back from the workdir: an edited one names files elsewhere.
    hostile = items + [secret_path, items[0].rsplit("/", 1)[0] + "/../secret.png"]
    stats = ReadStats()
    read = list(encoded_images(source, hostile, rank=0, world_size=1, seed=0, stats=stats, repeat=False))
    assert len(read) == 4 and stats.skipped == 2
    assert sorted(stats.examples) == sorted(f"{item}: not inside {folder}: refusing to read it"
                                            for item in hostile[4:])
