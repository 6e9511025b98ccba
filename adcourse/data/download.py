"""Fetching and unpacking the real benchmarks: checksummed, atomic and safe.

A download goes to a temporary file next to its destination and only takes the final name once
its SHA-256 matches; an archive is unpacked into a temporary sibling folder and only takes the
final name once every member is out. Whatever goes wrong, nothing half-written is left behind.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

from tqdm.auto import tqdm

_CHUNK = 1 << 20
# Python >= 3.10.12 / 3.11.4 ship tarfile's extraction filters; "data" refuses anything that is
# not a plain file, folder or in-tree link. It backs up the explicit member check below.
_TAR_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
_TAR_FILTER_ERROR = getattr(tarfile, "FilterError", ())
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError)
_CORRUPT_ARCHIVE_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    gzip.BadGzipFile,
    lzma.LZMAError,
    zlib.error,
    EOFError,
)


class DatasetError(RuntimeError):
    """A data problem the reader can fix; the message names the file or value and the fix."""


def cache_dir() -> Path:
    """Where downloaded data lives: ``$ADCOURSE_DATA``, or ``~/.cache/adcourse``."""
    return Path(os.environ.get("ADCOURSE_DATA") or Path.home() / ".cache" / "adcourse").expanduser()


def sha256sum(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: str | os.PathLike, sha256: str) -> Path:
    """Download ``url`` to ``dest`` and check its SHA-256; skip if ``dest`` is already right."""
    dest = Path(dest)
    if dest.is_file() and sha256sum(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                _stream(url, out, dest.name)
            except _NETWORK_ERRORS as err:
                raise DatasetError(_offline_message(url, dest, sha256, err)) from err
        got = sha256sum(tmp)
        if got != sha256:
            raise DatasetError(
                f"Checksum mismatch for {dest.name} downloaded from {url}:\n"
                f"  expected sha256 {sha256}\n  got      sha256 {got}\n"
                "The file was not kept. The server may have sent an error page or a different "
                "version: try again later, or download it by hand and check its checksum."
            )
        os.replace(tmp, dest)
    except BaseException:  # includes KeyboardInterrupt: never leave a partial file
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _stream(url: str, out, name: str) -> None:
    with urllib.request.urlopen(url, timeout=60) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))


def _offline_message(url: str, dest: Path, sha256: str, err: Exception) -> str:
    message = (
        f"Could not download {url} ({err}).\n"
        f"If this machine is offline, download {dest.name} on another machine "
        f"(sha256 {sha256}) and put it in the folder {dest.parent}: the next call checks it "
        "and uses it instead of downloading."
    )
    if dest.exists():
        message += (
            f"\nThe {dest.name} already there has a different checksum: it is incomplete or a "
            "different version; replace it."
        )
    return message


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Unpack a .zip, .tar, .tar.gz/.tgz or .tar.xz archive into the folder ``target``.

    Members that would land outside ``target`` (absolute paths, ``..``, links pointing out) are
    refused. ``target`` appears only once the whole archive is out; an archive that is corrupt
    or truncated leaves nothing behind.
    """
    archive, target = Path(archive), Path(target)
    name = archive.name.lower()
    if not name.endswith((".zip", ".tar", ".tar.gz", ".tgz", ".tar.xz")):
        raise DatasetError(
            f"Cannot extract {archive}: unsupported archive type "
            "(expected .zip, .tar, .tar.gz, .tgz or .tar.xz)."
        )
    if target.exists() and any(target.iterdir()):
        raise DatasetError(
            f"Cannot extract {archive.name} into {target}: the folder is not empty. "
            "Delete it (or choose another folder) to extract again."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        if name.endswith(".zip"):
            _extract_zip(archive, tmp)
        else:
            _extract_tar(archive, tmp)
        if target.exists():
            target.rmdir()  # empty, checked above
        os.replace(tmp, target)
    except _TAR_FILTER_ERROR as err:
        raise DatasetError(f"Refusing to extract {archive}: unsafe member ({err}).") from err
    except _CORRUPT_ARCHIVE_ERRORS as err:
        raise DatasetError(
            f"Cannot extract {archive}: it is corrupt or incomplete ({err}). "
            "Delete it and download it again."
        ) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:
            link = None
            if stat.S_ISLNK(info.external_attr >> 16):
                link = zf.read(info).decode("utf-8", "replace")
            _check_member(archive, info.filename, link=link)
        for info in tqdm(members, desc=f"extracting {archive.name}", unit="file"):
            zf.extract(info, dest)


def _extract_tar(archive: Path, dest: Path) -> None:
    def checked(tar):
        # Lazy, so that a multi-GB .tar.xz is decompressed once, not once to check and once to
        # extract.
        for member in tqdm(tar, desc=f"extracting {archive.name}", unit="file"):
            if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
                raise DatasetError(
                    f"Refusing to extract {archive}: member {member.name!r} is a device or pipe."
                )
            if member.issym():
                _check_member(archive, member.name, link=member.linkname)
            elif member.islnk():
                _check_member(archive, member.name, hardlink=member.linkname)
            else:
                _check_member(archive, member.name)
            yield member

    with tarfile.open(archive) as tar:
        tar.extractall(dest, members=checked(tar), **_TAR_FILTER)


def _check_member(archive: Path, name: str, link: str | None = None, hardlink: str | None = None):
    """Refuse a member whose path, or link target, would resolve outside the extraction folder."""
    # Checked on the path text against a stand-in root, so the answer does not depend on what
    # the disk holds; the tar "data" filter repeats the check against the disk while extracting.
    root = os.path.abspath(os.sep + "extraction-root")
    path = os.path.normpath(os.path.join(root, name))
    problems = []
    if os.path.isabs(name) or not _inside(path, root):
        problems.append("its path leaves the target folder")
    if link is not None and not _inside(os.path.join(os.path.dirname(path), link), root):
        problems.append(f"it is a symlink to {link!r}, outside the target folder")
    if hardlink is not None and not _inside(os.path.join(root, hardlink), root):
        problems.append(f"it is a hard link to {hardlink!r}, outside the target folder")
    if problems:
        raise DatasetError(
            f"Refusing to extract {archive}: member {name!r} is unsafe ({'; '.join(problems)}). "
            "Nothing was extracted; the archive is not a genuine copy of the dataset: delete it "
            "and download it again from the official source."
        )


def _inside(path: str, root: str) -> bool:
    path = os.path.normpath(path)
    return path == root or path.startswith(root + os.sep)


def download_and_extract(
    url: str, archive_name: str, sha256: str, target: str | os.PathLike
) -> Path:
    """Download ``archive_name`` next to ``target`` (checked) and unpack it into ``target``.

    Does nothing if ``target`` already holds files. The archive is kept next to ``target`` so a
    failed extraction can be redone offline; delete it to save disk space.
    """
    target = Path(target)
    if target.is_dir() and any(target.iterdir()):
        return target
    archive = download(url, target.parent / archive_name, sha256)
    return safe_extract(archive, target)
