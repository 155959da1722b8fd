"""URLs that carry credentials (user:password@, signed query strings) work as --data, yet the
credentials appear in no file of the workdir (config.json, data-index.json, W&B's run), in no
log line and in no error message. The data is a real zip served over HTTP behind basic auth, so
a listing that succeeds proves the credentials were used."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import pytest

from animegan import storage, tracking
from animegan.cli import main as cli_main
from animegan.config import TrainConfig
from animegan.data.index import DataIndex
from animegan.launcher import resolve
from animegan.retries import RetryPolicy, StorageError, call_with_retries
from animegan.workdir import RunLayout
from tests.conftest import TINY_MODEL
from tests.support.http_server import AuthenticatedFolderServer
from tests.support.images import write_folder
from tests.support.wandb_records import read_run, run_files

PASSWORD = "pa55-7f3c9e"
SIGNATURE = "5d41402abc4b2a76b9719d911017c592"
SECRETS = (PASSWORD, SIGNATURE)


def signed(url: str) -> str:
    """The URL as a signed URL (GCS V4 style): the signature and the credential are secrets, the rest is not."""
    return f"{url}?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=robot%40project&X-Goog-Expires=600" \
           f"&X-Goog-Signature={SIGNATURE}"


@pytest.mark.parametrize("url, expected", [
    ("https://user:pa55@host.example/faces.zip", "https://REDACTED@host.example/faces.zip"),
    ("https://ghp_token@host.example/a", "https://REDACTED@host.example/a"),
    ("https://storage.googleapis.com/b/faces.zip?X-Goog-Signature=ab12&X-Goog-Expires=600",
     "https://storage.googleapis.com/b/faces.zip?X-Goog-Signature=REDACTED&X-Goog-Expires=600"),
    ("https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F1&X-Amz-Security-Token=tt&X-Amz-Signature=ff",
     "https://b.s3.amazonaws.com/k?X-Amz-Credential=REDACTED&X-Amz-Security-Token=REDACTED&X-Amz-Signature=REDACTED"),
    ("https://acct.blob.core.windows.net/c/f.zip?sv=2022-11-02&se=2026&sig=abc%3D",
     "https://acct.blob.core.windows.net/c/f.zip?sv=2022-11-02&se=2026&sig=REDACTED"),
    ("gs://bucket/faces/x.png", "gs://bucket/faces/x.png"),
    ("http://host/path/with@sign?page=2#top", "http://host/path/with@sign?page=2#top"),
    ("no such zip archive: https://u:p@h/a.zip; check it", "no such zip archive: https://REDACTED@h/a.zip; check it"),
])
def test_credentials_in_urls_are_redacted_and_the_rest_kept(url, expected):
    assert storage.redact(url) == expected


@pytest.fixture
def served_faces(tmp_path):
    """A zip of 16 faces at a URL whose user:password (and signature) the server's basic auth needs."""
    write_folder(tmp_path / "faces", 16)
    (tmp_path / "served").mkdir()
    with zipfile.ZipFile(tmp_path / "served" / "faces.zip", "w") as archive:
        for path in sorted((tmp_path / "faces").iterdir()):
            archive.write(path, f"faces/{path.name}")
    with AuthenticatedFolderServer(tmp_path / "served", "faces", PASSWORD) as server:
        yield f"http://faces:{PASSWORD}@127.0.0.1:{server.port}"


def files_holding_a_secret(folder: Path) -> list[str]:
    return [str(path) for path in folder.rglob("*") if path.is_file()
            and any(secret.encode() in path.read_bytes() for secret in SECRETS)]


def test_a_data_url_with_credentials_is_read_but_never_written_down(served_faces, tmp_path):
    data = signed(f"{served_faces}/faces.zip")
    messages: list[str] = []
    config, index, _ = resolve(TrainConfig(data=data, workdir=str(tmp_path / "run"), steps=2, batch_size=8,
                                           **TINY_MODEL), log=messages.append)
    assert config.data == data and len(index.items) == 16  # the server let the listing through
    stored_config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored_config["data"] == storage.redact(data)
    assert stored_config["data"].startswith("http://REDACTED@127.0.0.1:") and "X-Goog-Signature=REDACTED" in \
        stored_config["data"] and "X-Goog-Expires=600" in stored_config["data"]
    assert files_holding_a_secret(tmp_path / "run") == []
    # The workers are given the real URL; the stored index matches it, and a resume reuses it.
    layout = RunLayout(config.workdir)
    assert DataIndex.load(layout.data_index, source=data).source == data
    assert DataIndex.load(layout.data_index).source == storage.redact(data)
    _, again, _ = resolve(config, log=messages.append)
    assert again.items == index.items and again.source == data
    assert not any(secret in message for message in messages for secret in SECRETS)


def test_an_error_naming_a_url_with_credentials_does_not_repeat_them(served_faces, tmp_path, capsys):
    status = cli_main(["train", "--data", signed(f"{served_faces}/missing.zip"), "--workdir", str(tmp_path / "run"),
                       "--dry-run"])
    assert status == 2
    error = capsys.readouterr().err
    assert error.startswith("animegan: error: no such zip archive: http://REDACTED@127.0.0.1:")
    assert not any(secret in error for secret in SECRETS)


def test_retried_storage_calls_log_and_raise_without_credentials(caplog):
    url = signed(f"https://user:{PASSWORD}@storage.example/faces.zip")

    def refused():
        raise ConnectionRefusedError(f"cannot connect to {url}")

    with caplog.at_level(logging.WARNING), pytest.raises(StorageError) as error:
        call_with_retries(refused, what=f"reading {url}", url=url,
                          policy=RetryPolicy(attempts=2, initial_delay=0, jitter=0))
    assert str(error.value).startswith("reading https://REDACTED@storage.example/faces.zip?")
    assert not any(secret in text for secret in SECRETS for text in [str(error.value), error.value.url, caplog.text])


def test_the_wandb_run_config_holds_no_credentials(tmp_path, monkeypatch):
    for variable in ["WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"]:
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home" / variable.lower()))
    data = signed(f"https://faces:{PASSWORD}@storage.example/faces.zip")
    workdir = tmp_path / "run"
    config = TrainConfig(data=data, workdir=str(workdir), inception_weights=data.replace("faces.zip", "w.h5"))
    writer = tracking.start_run(config, RunLayout(str(workdir)), {"WANDB_MODE": "offline"}, log=lambda _: None)
    writer.close()
    [run_file] = run_files(workdir)
    run = read_run(run_file)
    assert run.config["data"] == storage.redact(data)
    assert run.config["inception_weights"].startswith("https://REDACTED@storage.example/w.h5?")
    assert files_holding_a_secret(workdir) == []


@pytest.mark.ray
def test_a_run_on_data_behind_credentials_trains_and_keeps_them_out_of_its_workdir_and_output(
        ray_cluster, served_faces, tmp_path, capfd):
    from animegan.launcher import run_training

    data = signed(f"{served_faces}/faces.zip")
    config = TrainConfig(data=data, workdir=str(tmp_path / "run"), steps=4, batch_size=8, log_every=2,
                         sample_every=4, checkpoint_every=4, cpus_per_worker=1, **TINY_MODEL)
    outcome = run_training(config)
    assert outcome.status == "finished" and outcome.step == 4  # the workers read the data with the real URL
    assert files_holding_a_secret(tmp_path / "run") == []
    output = capfd.readouterr()
    assert not any(secret in output.out + output.err for secret in SECRETS)
