"""All URL handling for fsspec lives here: local paths, gs:// (gcsfs), and the rest.

Everything the job reads or writes goes through these functions, so a workdir
or a dataset can be a local folder or a bucket prefix without the callers
knowing which.

Names read from storage (the files a checkpoint's state.json lists, a pack's
shards, the entries of an archive journal) are written by whoever can write to
a shared bucket. `join` never lets a part leave its base: every part must pass
`relative_name_problem`, the one check of such names, so an absolute part, a
`..`, a URL scheme or a chained fsspec URL (`a::file:///`) is refused instead of
replacing or climbing out of the base.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import tempfile
from typing import Any
from urllib.parse import unquote

# gcsfs probes a gRPC endpoint for hierarchical-namespace buckets, which the GCS
# emulator lacks: every call would wait 60 s. Must be set before gcsfs is imported.
if os.environ.get("STORAGE_EMULATOR_HOST"):
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import fsspec  # noqa: E402  (after the environment fix above)

# gs:// credentials are whatever gcsfs finds (application default credentials);
# none are ever passed in a config. ANIMEGAN_GCS_TOKEN=anon reads public buckets
# without credentials (any gcsfs `token` value works, e.g. a key file's path).
GCS_TOKEN_VARIABLE = "ANIMEGAN_GCS_TOKEN"


# A URL can carry its own credentials: user:password@ (HTTP basic auth, a token as the user),
# or a signed query string (GCS X-Goog-Signature, S3 X-Amz-Signature and -Credential and
# -Security-Token, Azure SAS sig=). redact() keeps them out of every file, dashboard and log line.
REDACTED = "REDACTED"
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_SECRET_PARAMETER_PARTS = ("signature", "credential", "token", "secret", "password", "passwd")
_SECRET_PARAMETERS = frozenset({"sig", "key", "apikey", "api_key", "auth", "code"})


def _is_secret_parameter(name: str) -> bool:
    name = unquote(name).lower()
    return name in _SECRET_PARAMETERS or any(part in name for part in _SECRET_PARAMETER_PARTS)


def _redact_url(url: str) -> str:
    scheme, rest = url.split("://", 1)
    authority = re.match(r"[^/?#]*", rest).group(0)
    tail = rest[len(authority):]
    if "@" in authority:
        authority = f"{REDACTED}@{authority.rsplit('@', 1)[1]}"
    path, question, query = tail.partition("?")
    if question:
        query, hash_sign, fragment = query.partition("#")
        parameters = []
        for parameter in query.split("&"):
            name, equals, value = parameter.partition("=")
            parameters.append(f"{name}={REDACTED}" if equals and value and _is_secret_parameter(name) else parameter)
        tail = f"{path}?{'&'.join(parameters)}{hash_sign}{fragment}"
    return f"{scheme}://{authority}{tail}"


def redact(text: str) -> str:
    """`text` with the credentials of every URL in it replaced by REDACTED (user:password@, signatures)."""
    return _URL_IN_TEXT.sub(lambda match: _redact_url(match.group(0)), text)


def redacted(value: Any) -> Any:
    """A JSON-like value (dicts, lists, strings) with the credentials in its URLs replaced, for files and dashboards."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redacted(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redacted(item) for item in value]
    return value


def _storage_options(protocol: str) -> dict[str, Any]:
    token = os.environ.get(GCS_TOKEN_VARIABLE)
    return {"token": token} if token and protocol in {"gs", "gcs"} else {}


def sha256_of_file(path: str) -> str:
    """The SHA-256 of a local file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_protocol(url: str) -> tuple[str, str]:
    """('gs', 'bucket/key') for 'gs://bucket/key'; ('file', path) for a local path."""
    if "://" in url:
        protocol, rest = url.split("://", 1)
        return protocol.lower(), rest
    return "file", url


def is_local(url: str) -> bool:
    return split_protocol(url)[0] in {"file", "local"}


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and the path inside it, with a clear error for unknown schemes."""
    protocol, _ = split_protocol(url)
    if protocol not in fsspec.available_protocols():
        raise ValueError(
            f"unknown URL scheme {protocol + '://'!r} in {url!r}; use a local path, gs://bucket/prefix, "
            f"or another fsspec protocol"
        )
    try:
        fs, path = fsspec.core.url_to_fs(url, **_storage_options(protocol))
    except ImportError as error:
        raise ValueError(f"URL {url!r} needs a package that is not installed: {error}") from None
    return fs, path


def relative_name_problem(name: object, *, single: bool = False) -> str | None:
    """Why `name` is not a plain relative name that stays inside its folder, or None when it is.

    Parts are separated by '/' only; `single` asks for one part (a file directly in the folder).
    The rules hold on every filesystem: what is harmless on one (a backslash, a colon on
    Linux) is a separator, a drive or a URL scheme on another, or to fsspec.
    """
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a name"
    if not name:
        return "is empty"
    if any(ord(character) < 32 or ord(character) == 127 for character in name):
        return "holds a control character"
    if "\\" in name:
        return "holds a backslash"
    if ":" in name:
        return "holds a colon (a URL scheme, a drive letter or a chained URL)"
    if name.startswith("/"):
        return "is an absolute path"
    if name.startswith("~"):
        return "starts with ~ (a home folder)"
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "has an empty, '.' or '..' part"
    if single and len(parts) > 1:
        return "is not directly in its folder"
    return None


def check_relative_name(name: object, where: str, *, single: bool = False) -> str:
    """`name` unchanged when it stays inside its folder; else ValueError naming it and `where` it was read."""
    problem = relative_name_problem(name, single=single)
    if problem is not None:
        raise ValueError(f"{where} names {name!r}, which {problem}: refusing to use it")
    return name  # type: ignore[return-value]


def join(url: str, *parts: str) -> str:
    """Joins relative path parts onto a URL with '/', keeping the scheme; ValueError if a part could escape."""
    for part in parts:
        problem = relative_name_problem(part)
        if problem is not None:
            raise ValueError(f"cannot join {part!r} onto {url}: it {problem}")
    if is_local(url):
        return os.path.join(split_protocol(url)[1], *parts)
    return posixpath.join(url, *parts)


def absolute(url: str) -> str:
    """An absolute local path, or the URL unchanged when it is remote."""
    if is_local(url):
        return os.path.abspath(os.path.expanduser(split_protocol(url)[1]))
    return url


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def makedirs(url: str) -> None:
    fs, path = filesystem(url)
    fs.makedirs(path, exist_ok=True)


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    return fs.cat_file(path)


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def write_bytes(url: str, data: bytes) -> None:
    """Writes a whole file so that readers never see it half written.

    Locally: a temporary file in the same folder, then an atomic rename. On object
    storage a single upload is already atomic: the object appears whole or not at all.
    """
    fs, path = filesystem(url)
    if is_local(url):
        folder = os.path.dirname(os.path.abspath(path)) or "."
        os.makedirs(folder, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise
        return
    fs.pipe_file(path, data)


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode("utf-8"))


def upload_file(local_path: str, url: str) -> None:
    """Copies a local file to a URL (atomically, as write_bytes does)."""
    if is_local(url):
        with open(local_path, "rb") as file:
            write_bytes(url, file.read())
        return
    fs, path = filesystem(url)
    fs.put_file(local_path, path)


def remove(url: str) -> None:
    """Deletes a file if it exists."""
    fs, path = filesystem(url)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass


def remove_folder(url: str) -> None:
    """Deletes a folder and everything in it, if it exists."""
    fs, path = filesystem(url)
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass


def move(source: str, destination: str) -> None:
    """Moves a file or folder to another URL on the same filesystem; calling it again finishes an interrupted move.

    Locally this is one atomic rename. Object storage has no rename: each object
    is copied, then deleted, so an interruption leaves every object in the old
    place, the new place or both, never in neither.
    """
    fs, source_path = filesystem(source)
    _, destination_path = filesystem(destination)
    if is_local(source):
        if os.path.lexists(source_path):
            os.makedirs(os.path.dirname(os.path.abspath(destination_path)), exist_ok=True)
            os.replace(source_path, destination_path)
        return
    fs.invalidate_cache()  # other processes may have written here since this process last listed it
    if fs.isfile(source_path):
        fs.cp_file(source_path, destination_path)
        fs.rm_file(source_path)
        return
    prefix = source_path.rstrip("/") + "/"
    for path in fs.find(source_path):
        fs.cp_file(path, posixpath.join(destination_path, path[len(prefix):]))
        fs.rm_file(path)


def list_dir(url: str) -> list[str]:
    """Names (not paths) of the entries directly under a folder URL; [] when it is missing."""
    fs, path = filesystem(url)
    try:
        # refresh: other processes (Ray workers, an earlier run) write here; a cached listing would miss it.
        entries = fs.ls(path, detail=False, refresh=True)
    except FileNotFoundError:
        return []
    return sorted(posixpath.basename(entry.rstrip("/")) for entry in entries)


def file_sizes(url: str) -> dict[str, int]:
    """{name: size in bytes} of the files directly under a folder URL; {} when it is missing."""
    fs, path = filesystem(url)
    try:
        entries = fs.ls(path, detail=True, refresh=True)
    except FileNotFoundError:
        return {}
    return {posixpath.basename(entry["name"].rstrip("/")): int(entry["size"])
            for entry in entries if entry.get("type") == "file"}


def pyarrow_filesystem(url: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path) for Ray Train's storage, backed by the same fsspec filesystem.

    Ray persists checkpoints through pyarrow; wrapping fsspec keeps one storage
    stack (gcsfs and its credentials and retries) for data, workdir and checkpoints.
    """
    import pyarrow.fs

    if is_local(url):
        return pyarrow.fs.LocalFileSystem(), absolute(url)
    fs, path = filesystem(url)
    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)), path
