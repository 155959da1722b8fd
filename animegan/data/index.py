"""The listing of a data source, made once by the driver and read by every worker.

Kept in the workdir, so that a resumed run sees exactly the same items in the
same order, and its data position (epoch, items consumed) still means the same.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from animegan import storage
from animegan.data.sources import list_images, open_source


@dataclass(frozen=True)
class DataIndex:
    source: str
    items: list[str]

    def save(self, url: str) -> None:
        storage.write_text(url, json.dumps(asdict(self)))

    @classmethod
    def load(cls, url: str) -> "DataIndex":
        return cls(**json.loads(storage.read_text(url)))


def index_for(source_url: str, index_url: str) -> DataIndex:
    """The stored listing when it is of the same source; otherwise a fresh listing, stored."""
    if storage.exists(index_url):
        stored = DataIndex.load(index_url)
        if stored.source == source_url:
            return stored
    index = DataIndex(source=source_url, items=list_images(open_source(source_url)))
    index.save(index_url)
    return index
