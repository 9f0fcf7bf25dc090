"""Warehouse files through pyarrow's file systems: local paths and object stores (`s3a://` is read as `s3://`).

The one way the driver side of a job, a gate or a CLI verb lists, reads, writes and deletes warehouse files. It needs
no JVM, so it works the same under spark-submit, a Spark Connect client, Airflow and the servers. Object-store
credentials and endpoint come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL),
never from code.
"""

from __future__ import annotations

import os
from functools import lru_cache

import pyarrow.fs as pafs

from speedprofile.warehouse import is_remote


@lru_cache(maxsize=8)
def _remote_fs(scheme_authority: str) -> pafs.FileSystem:
    fs, _ = pafs.FileSystem.from_uri(scheme_authority + "/")
    return fs


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(file system, path inside it) for a local path, a file:// URI or an object-store URI."""
    if not is_remote(path):
        return pafs.LocalFileSystem(), os.path.abspath(path.removeprefix("file://"))
    if path.startswith("s3a://"):
        path = "s3://" + path.removeprefix("s3a://")
    scheme, rest = path.split("://", 1)
    bucket = rest.split("/", 1)[0]
    return _remote_fs(f"{scheme}://{bucket}"), rest.rstrip("/")


def exists(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def delete(path: str) -> None:
    """Remove a file or a folder tree; nothing happens when it does not exist."""
    fs, p = filesystem(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(p)
    elif info.type == pafs.FileType.File:
        fs.delete_file(p)


def list_dir(path: str) -> list[str]:
    """Names of the entries directly under path ([] if missing)."""
    fs, p = filesystem(path)
    if fs.get_file_info(p).type != pafs.FileType.Directory:
        return []
    return sorted(os.path.basename(i.path.rstrip("/")) for i in fs.get_file_info(pafs.FileSelector(p)))


def read_text(path: str) -> str:
    """A small text file (raises FileNotFoundError when missing)."""
    fs, p = filesystem(path)
    if fs.get_file_info(p).type == pafs.FileType.NotFound:
        raise FileNotFoundError(path)
    with fs.open_input_stream(p) as fh:
        return fh.read().decode("utf-8")


def write_text(path: str, text: str) -> None:
    """Write a small text file whole: readers see the old or the new content (rename on local disks; object
    stores publish a PUT atomically)."""
    fs, p = filesystem(path)
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(p) or ".", exist_ok=True)
        tmp = f"{p}.tmp-{os.getpid()}"
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, p)
        return
    with fs.open_output_stream(p) as out:
        out.write(text.encode("utf-8"))


def is_file(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.get_file_info(p).type == pafs.FileType.File


def list_files(path: str) -> list[str]:
    """Every file below path (recursively), as URIs of the same scheme as path, sorted ([] if missing)."""
    fs, p = filesystem(path)
    if fs.get_file_info(p).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=True))
    base, inner = path.rstrip("/"), p.rstrip("/")
    return sorted(base + i.path[len(inner):] for i in infos if i.type == pafs.FileType.File)


def size(path: str) -> int:
    fs, p = filesystem(path)
    info = fs.get_file_info(p)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(path)
    return int(info.size)


def open_input(path: str):
    """A binary stream of a file (local or object store)."""
    fs, p = filesystem(path)
    return fs.open_input_stream(p)
