"""Image sources: where encoded images come from, whatever the storage.

A source lists its items once (in the driver) and reads any subset of them (in
each worker). Items are plain strings, so a listing can be written to the
workdir and split between workers by rank.

Sources: a folder or glob (local or any fsspec URL, e.g. gs://bucket/prefix), a
zip archive read in place, and packed shards (animegan.data.shards), which
`open_source` recognises by their manifest.

Every source is untrusted: an item larger than `max_item_bytes` (a file, a zip
member by its declared size, a pack entry by its manifest size) is never read
whole; it is reported as `Oversized` instead of its bytes and skipped like an
unreadable image.
"""

from __future__ import annotations

import abc
import os
import posixpath
import queue
import re
import threading
import zipfile
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

from animegan import storage
from animegan.config import TrainConfig
from animegan.retries import call_with_retries, is_transient

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
GLOB_CHARACTERS = frozenset("*?[")

# Objects fetched at once by one worker reading raw files from a bucket. Real GCS
# serves many requests per client in parallel; the local GCS emulator serves one
# at a time, and with 8 or more queued its responses stall.
CONCURRENCY_VARIABLE = "ANIMEGAN_READ_CONCURRENCY"
DEFAULT_CONCURRENCY = 32
EMULATOR_CONCURRENCY = 4
# Objects per fetch round: enough to keep every connection busy, few enough to start quickly.
OBJECTS_PER_CONCURRENT_REQUEST = 8

DEFAULT_MAX_ITEM_BYTES = TrainConfig.max_image_bytes

ReadResult = tuple[str, "bytes | Exception"]
Request = TypeVar("Request")
Result = TypeVar("Result")


def read_concurrency() -> int:
    """Concurrent object fetches per worker: $ANIMEGAN_READ_CONCURRENCY, else a default for the endpoint."""
    value = os.environ.get(CONCURRENCY_VARIABLE, "").strip()
    if not value:
        return EMULATOR_CONCURRENCY if os.environ.get("STORAGE_EMULATOR_HOST") else DEFAULT_CONCURRENCY
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{CONCURRENCY_VARIABLE} must be a positive integer, got {value!r}")
    return int(value)


def is_image_name(name: str) -> bool:
    base = posixpath.basename(name)
    # macOS resource forks (._x.jpg, __MACOSX/) look like images but are not.
    if base.startswith("._") or "__MACOSX/" in name:
        return False
    return posixpath.splitext(base)[1].lower() in IMAGE_EXTENSIONS


def prefetched(function: Callable[[Request], Result], requests: Iterable[Request],
               depth: int = 1) -> Iterator[Result]:
    """`function(request)` for each request, in order, computed up to `depth` results ahead in a thread.

    The next fetch is in flight while the caller consumes the current result, so
    a storage round trip never leaves the pipeline idle. Errors are raised to
    the caller, in order. The thread is a daemon: a fetch still retrying when the
    process ends (the end of training, Ctrl-C) never holds up its exit.
    """
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def hand_over(outcome: tuple[bool, object]) -> bool:
        """Queues an outcome, unless the consumer has gone; True when it was queued."""
        while not stop.is_set():
            try:
                results.put(outcome, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        for request in requests:
            try:
                outcome = (True, function(request))
            except BaseException as error:  # noqa: BLE001 (handed to the consumer)
                outcome = (False, error)
            if not hand_over(outcome) or not outcome[0]:
                return
        hand_over((True, _END))

    threading.Thread(target=work, name="animegan-prefetch", daemon=True).start()
    try:
        while True:
            succeeded, value = results.get()
            if not succeeded:
                raise value
            if value is _END:
                return
            yield value
    finally:
        # The consumer may stop early (end of training): the thread stops after its current fetch.
        stop.set()


_END = object()


class Unread(ValueError):
    """An item the source refused to read; its message is the whole reason."""


class Oversized(Unread):
    """An item larger than the source's byte limit, left unread."""

    def __init__(self, size: int | None, limit: int, what: str = "file"):
        amount = f"{size:,} bytes" if size is not None else f"more than {limit:,} bytes"
        super().__init__(f"{what} of {amount}, above the limit of {limit:,} (--max-image-bytes); not read")


def failure_reason(error: Exception) -> str:
    """Why an item could not be read, as a skipped image's reason."""
    if isinstance(error, Unread):
        return str(error)
    return f"read failed: {type(error).__name__}: {error}"


class ImageSource(abc.ABC):
    """Encoded images behind a URL."""

    # True for a pack of decoded pixels (`data pack --decoded`): items are uint8 64x64x3 arrays.
    decoded = False

    def __init__(self, url: str, max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES):
        self.url = url
        self.max_item_bytes = max_item_bytes

    @abc.abstractmethod
    def list_items(self) -> list[str]:
        """All image items in a fixed order (sorted, or the pack's order), so every process agrees on it."""

    @abc.abstractmethod
    def read(self, items: Sequence[str]) -> Iterator[ReadResult]:
        """(item, bytes) for each item in order; an Exception instead of bytes when unreadable.

        A storage failure that outlasts every retry raises animegan.retries.StorageError.
        """

    def sequential_runs(self, items: Sequence[str]) -> list[int] | None:
        """Lengths of the consecutive groups of `items` best read as one sequential stream (packed
        shards), in order; None when every item is read on its own."""
        return None

    def describe(self) -> str:
        return self.url


class FileSource(ImageSource):
    """A folder (searched recursively) or a glob, local or on any fsspec filesystem."""

    def __init__(self, url: str, concurrency: int | None = None, max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES):
        super().__init__(url, max_item_bytes)
        self.fs, self.path = storage.filesystem(url)
        self.concurrency = concurrency or read_concurrency()
        self.local = storage.is_local(url)

    def list_items(self) -> list[str]:
        found = call_with_retries(self._find, what=f"listing {self.url}", url=self.url)
        images = sorted(path for path in found if is_image_name(path))
        if not images and any(PACK_SHARD_NAME.fullmatch(posixpath.basename(path)) for path in found):
            raise ValueError(f"{self.url} holds shards of a pack but no manifest.json: the pack is incomplete; "
                             f"run `animegan data pack` with the same source and destination again to finish it")
        return images

    def _find(self) -> list[str]:
        if GLOB_CHARACTERS & set(self.path):
            return self.fs.glob(self.path)
        if not self.fs.exists(self.path):
            raise ValueError(f"no such file, folder, bucket or prefix: {self.url}")
        if not self.fs.isdir(self.path):
            raise ValueError(f"{self.url} is a file, not a folder of images, a .zip archive or a pack manifest")
        return self.fs.find(self.path)

    def _outside(self, item: str) -> bool:
        """Whether an item lies outside the folder (or the glob's folder): items come back from the
        workdir's data-index.json, which whoever can write to the workdir can edit."""
        root = self.path
        if GLOB_CHARACTERS & set(root):
            root = root[:min(root.index(character) for character in GLOB_CHARACTERS if character in root)]
            root = root.rsplit("/", 1)[0]
        prefix = root.rstrip("/") + "/"
        return not item.startswith(prefix) or ".." in item[len(prefix):].split("/")

    def _refusal(self) -> Unread:
        return Unread(f"not inside {self.url}: refusing to read it")

    def read(self, items: Sequence[str]) -> Iterator[ReadResult]:
        if self.local:
            for item in items:
                if self._outside(item):
                    yield item, self._refusal()
                    continue
                try:
                    with open(item, "rb") as file:
                        data = file.read(self.max_item_bytes + 1)
                        if len(data) > self.max_item_bytes:
                            data = Oversized(os.fstat(file.fileno()).st_size, self.max_item_bytes)
                    yield item, data
                except OSError as error:
                    yield item, error
            return
        # Remote objects: one request per object is a round trip each, so fetch a
        # round of them concurrently, and the next round while this one is consumed.
        size = self.concurrency * OBJECTS_PER_CONCURRENT_REQUEST
        rounds = [items[start:start + size] for start in range(0, len(items), size)]
        for paths, results in zip(rounds, prefetched(self._fetch, rounds)):
            for item in paths:
                data = results.get(item, FileNotFoundError(item))
                if isinstance(data, bytes) and len(data) > self.max_item_bytes:
                    data = Oversized(None, self.max_item_bytes)
                yield item, data

    def _fetch(self, paths: Sequence[str]) -> dict:
        """Bytes (or the error) of each path; objects failing transiently are fetched again."""
        results: dict = {path: self._refusal() for path in paths if self._outside(path)}
        failing = [path for path in paths if path not in results]
        if not failing:
            return results

        def fetch_failing() -> None:
            nonlocal failing
            # A range request: an object past the byte limit is never fetched whole.
            results.update(self.fs.cat(failing, on_error="return", batch_size=self.concurrency,
                                       end=self.max_item_bytes + 1))
            failing = [path for path in failing if is_transient(results.get(path))]
            if failing:
                raise results[failing[0]]

        call_with_retries(
            fetch_failing,
            what=lambda: f"reading {self.fs.unstrip_protocol(failing[0])} ({len(failing)} object(s) failing)",
            url=self.url,
        )
        return results


class ZipSource(ImageSource):
    """A zip archive read in place (Kaggle's archive.zip as downloaded), local or remote."""

    def __init__(self, url: str, max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES):
        super().__init__(url, max_item_bytes)
        self.fs, self.path = storage.filesystem(url)

    def _open(self) -> zipfile.ZipFile:
        try:
            file = self.fs.open(self.path, "rb")
        except FileNotFoundError:
            raise ValueError(f"no such zip archive: {self.url}") from None
        try:
            return zipfile.ZipFile(file)
        except zipfile.BadZipFile:
            raise ValueError(f"{self.url} is not a readable zip archive") from None

    def list_items(self) -> list[str]:
        with self._open() as archive:
            return sorted(info.filename for info in archive.infolist()
                          if not info.is_dir() and is_image_name(info.filename))

    def read(self, items: Sequence[str]) -> Iterator[ReadResult]:
        with self._open() as archive:
            for item in items:
                try:
                    info = archive.getinfo(item)
                    if info.file_size > self.max_item_bytes:
                        # A zip bomb's members declare their size; a member whose data inflates past
                        # its declared size is cut there by zipfile and fails its CRC check.
                        yield item, Oversized(info.file_size, self.max_item_bytes, "zip member")
                        continue
                    with archive.open(info) as member:
                        data = member.read(self.max_item_bytes + 1)
                    yield item, data
                except (KeyError, zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
                    yield item, error


# Names of the files `animegan data pack` writes (see animegan.data.shards).
PACK_MANIFEST = "manifest.json"
PACK_SHARD_NAME = re.compile(r"shard-\d{5,}\.tar")


def open_source(url: str, max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES) -> ImageSource:
    """The source for a URL: a .zip archive, a glob, packed shards (their manifest or its folder),
    or a folder / bucket prefix of image files. Items above `max_item_bytes` are never read."""
    if not url:
        raise ValueError("the data URL is empty")
    protocol, path = storage.split_protocol(url)
    if protocol in ("http", "https"):
        path = path.split("#", 1)[0].split("?", 1)[0]  # a query string (a signed URL) is not a glob
    if GLOB_CHARACTERS & set(path):
        return FileSource(url, max_item_bytes=max_item_bytes)
    if path.lower().endswith(".zip"):
        return ZipSource(url, max_item_bytes=max_item_bytes)
    if _is_pack(url):
        from animegan.data.shards import PackedSource

        return PackedSource(url, max_item_bytes=max_item_bytes)
    return FileSource(url, max_item_bytes=max_item_bytes)


def _is_pack(url: str) -> bool:
    if posixpath.basename(url.rstrip("/")) == PACK_MANIFEST:
        return True
    manifest = storage.join(url, PACK_MANIFEST)
    return call_with_retries(lambda: storage.exists(manifest), what=f"looking for {manifest}", url=manifest)


def list_images(source: ImageSource) -> list[str]:
    """Lists a source, turning storage errors and an empty listing into one clear message."""
    try:
        items = source.list_items()
    except FileNotFoundError:
        raise ValueError(f"no such file, folder, bucket or prefix: {source.url}") from None
    except PermissionError as error:
        raise ValueError(f"permission denied listing {source.url}: {error}") from None
    if not items:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise ValueError(f"no images ({extensions}) found at {source.url}")
    return items
