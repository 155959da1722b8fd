"""Image sources: where encoded images come from, whatever the storage.

A source lists its items once (in the driver) and reads any subset of them (in
each worker). Items are plain strings, so a listing can be written to the
workdir and split between workers by rank.
"""

from __future__ import annotations

import abc
import concurrent.futures
import posixpath
import zipfile
from typing import Iterator, Sequence

from animegan import storage

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
GLOB_CHARACTERS = frozenset("*?[")

# One read of a remote source fetches this many objects concurrently.
DEFAULT_CONCURRENCY = 4

ReadResult = tuple[str, "bytes | Exception"]


def is_image_name(name: str) -> bool:
    base = posixpath.basename(name)
    # macOS resource forks (._x.jpg, __MACOSX/) look like images but are not.
    if base.startswith("._") or "__MACOSX/" in name:
        return False
    return posixpath.splitext(base)[1].lower() in IMAGE_EXTENSIONS


class ImageSource(abc.ABC):
    """Encoded images behind a URL."""

    def __init__(self, url: str):
        self.url = url

    @abc.abstractmethod
    def list_items(self) -> list[str]:
        """All image items, sorted, so every process agrees on the order."""

    @abc.abstractmethod
    def read(self, items: Sequence[str]) -> Iterator[ReadResult]:
        """(item, bytes) for each item in order; an Exception instead of bytes when unreadable."""

    def describe(self) -> str:
        return self.url


class FileSource(ImageSource):
    """A folder (searched recursively) or a glob, local or on any fsspec filesystem."""

    def __init__(self, url: str, concurrency: int = DEFAULT_CONCURRENCY):
        super().__init__(url)
        self.fs, self.path = storage.filesystem(url)
        self.concurrency = concurrency
        self.local = storage.is_local(url)

    def list_items(self) -> list[str]:
        if GLOB_CHARACTERS & set(self.path):
            found = self.fs.glob(self.path)
        else:
            if not self.fs.exists(self.path):
                raise ValueError(f"no such file, folder, bucket or prefix: {self.url}")
            if not self.fs.isdir(self.path):
                raise ValueError(f"{self.url} is a file, not a folder of images or a .zip archive")
            found = self.fs.find(self.path)
        return sorted(path for path in found if is_image_name(path))

    def read(self, items: Sequence[str]) -> Iterator[ReadResult]:
        if self.local:
            for item in items:
                try:
                    with open(item, "rb") as file:
                        yield item, file.read()
                except OSError as error:
                    yield item, error
            return
        # Remote objects: fetch chunks concurrently and fetch the next chunk while
        # the current one is consumed, so a round trip never stalls the pipeline.
        chunk_size = self.concurrency * 8
        chunks = [items[start:start + chunk_size] for start in range(0, len(items), chunk_size)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as prefetcher:
            pending = prefetcher.submit(self._fetch, chunks[0]) if chunks else None
            for index in range(len(chunks)):
                results = pending.result()
                if index + 1 < len(chunks):
                    pending = prefetcher.submit(self._fetch, chunks[index + 1])
                for item in chunks[index]:
                    yield item, results.get(item, FileNotFoundError(item))

    def _fetch(self, paths: Sequence[str]) -> dict:
        return self.fs.cat(list(paths), on_error="return", batch_size=self.concurrency)


class ZipSource(ImageSource):
    """A zip archive read in place (Kaggle's archive.zip as downloaded), local or remote."""

    def __init__(self, url: str):
        super().__init__(url)
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
                    yield item, archive.read(item)
                except (KeyError, zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
                    yield item, error


def open_source(url: str) -> ImageSource:
    """The source for a URL: a .zip archive, a glob, or a folder / bucket prefix."""
    if not url:
        raise ValueError("the data URL is empty")
    _, path = storage.split_protocol(url)
    if not GLOB_CHARACTERS & set(path) and path.lower().endswith(".zip"):
        return ZipSource(url)
    return FileSource(url)


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
