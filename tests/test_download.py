"""Downloads are checked and atomic; archives are extracted safely or not at all."""

import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from adcourse.data.download import (
    DatasetError,
    cache_dir,
    download,
    download_and_extract,
    safe_extract,
    sha256sum,
)

UNREACHABLE = "http://127.0.0.1:9/x.zip"  # the discard port: connection refused at once
ARCHIVE_SUFFIXES = [".zip", ".tar", ".tar.gz", ".tgz", ".tar.xz"]


def write_archive(path: Path, files: dict, links: dict = None, hardlinks: dict = None) -> Path:
    """An archive with ``files`` {name: bytes}, ``links`` {name: symlink target} and (tar only)
    ``hardlinks`` {name: target member}; members are written as given, unsanitised."""
    links, hardlinks = links or {}, hardlinks or {}
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)
            for name, target in links.items():
                info = zipfile.ZipInfo(name)
                info.external_attr = (0o120777) << 16  # S_IFLNK | rwx
                zf.writestr(info, target)
        return path
    mode = {".tar": "w", ".gz": "w:gz", ".tgz": "w:gz", ".xz": "w:xz"}[path.suffix]
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for kind, table in ((tarfile.SYMTYPE, links), (tarfile.LNKTYPE, hardlinks)):
            for name, target in table.items():
                info = tarfile.TarInfo(name)
                info.type, info.linkname = kind, target
                tf.addfile(info)
    return path


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ADCOURSE_DATA", str(tmp_path / "data"))
    assert cache_dir() == tmp_path / "data"
    monkeypatch.delenv("ADCOURSE_DATA")
    assert cache_dir() == Path.home() / ".cache" / "adcourse"


def test_sha256sum_matches_hashlib(tmp_path):
    data = os.urandom(3 << 20)  # several read chunks
    (tmp_path / "f").write_bytes(data)
    assert sha256sum(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_download_file_url_verifies_and_keeps_only_the_file(tmp_path):
    data = b"benchmark bytes" * 1000
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    dest = tmp_path / "cache" / "data.bin"
    assert download(source.as_uri(), dest, hashlib.sha256(data).hexdigest()) == dest
    assert dest.read_bytes() == data
    assert os.listdir(dest.parent) == ["data.bin"]


def test_download_skips_a_file_already_there(tmp_path):
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"already here")
    # An unreachable URL proves nothing was fetched.
    download(UNREACHABLE, dest, hashlib.sha256(b"already here").hexdigest())
    assert dest.read_bytes() == b"already here"


def test_checksum_mismatch_names_both_and_leaves_nothing(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"not what was expected")
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError) as err:
        download(source.as_uri(), cache / "data.bin", "0" * 64)
    message = str(err.value)
    assert "0" * 64 in message
    assert hashlib.sha256(b"not what was expected").hexdigest() in message
    assert "data.bin" in message
    assert os.listdir(cache) == []


def test_unreachable_url_says_what_to_download_and_where(tmp_path):
    dest = tmp_path / "cache" / "x.zip"
    with pytest.raises(DatasetError) as err:
        download(UNREACHABLE, dest, "ab" * 32)
    message = str(err.value)
    assert UNREACHABLE in message
    assert "x.zip" in message
    assert str(dest.parent) in message
    assert "ab" * 32 in message
    assert os.listdir(dest.parent) == []


def test_unreachable_url_mentions_a_wrong_file_already_there(tmp_path):
    dest = tmp_path / "x.zip"
    dest.write_bytes(b"half a download")
    with pytest.raises(DatasetError, match="different checksum"):
        download(UNREACHABLE, dest, "ab" * 32)


class _BrokenResponse:
    """A response that delivers one chunk, then fails with ``error``."""

    headers = {"Content-Length": "100"}

    def __init__(self, error):
        self.error, self.sent = error, False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read(self, size):
        if self.sent:
            raise self.error
        self.sent = True
        return b"x" * 10


@pytest.mark.parametrize(
    "error, raised",
    [(KeyboardInterrupt(), KeyboardInterrupt), (ConnectionResetError("reset"), DatasetError)],
)
def test_interrupted_download_leaves_nothing(monkeypatch, tmp_path, error, raised):
    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: _BrokenResponse(error))
    with pytest.raises(raised):
        download("http://example.invalid/x.zip", tmp_path / "x.zip", "ab" * 32)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("suffix", ARCHIVE_SUFFIXES)
def test_extract_every_format(tmp_path, suffix):
    archive = write_archive(
        tmp_path / f"data{suffix}", {"cat/train/a.txt": b"alpha", "readme.txt": b"hi"}
    )
    target = safe_extract(archive, tmp_path / "out")
    assert (target / "cat" / "train" / "a.txt").read_bytes() == b"alpha"
    assert (target / "readme.txt").read_bytes() == b"hi"
    assert sorted(os.listdir(tmp_path)) == sorted([archive.name, "out"])


def test_symlink_inside_the_target_is_kept(tmp_path):
    archive = write_archive(
        tmp_path / "data.tar", {"real/a.txt": b"alpha"}, links={"latest": "real"}
    )
    target = safe_extract(archive, tmp_path / "out")
    assert (target / "latest").is_symlink()
    assert (target / "latest" / "a.txt").read_bytes() == b"alpha"


# (member name, files, symlinks, hard links) of archives that try to write outside the target;
# "ABSOLUTE" is replaced by an absolute path under tmp_path in the test.
ESCAPES = [
    ("../evil.txt", {"../evil.txt": b"evil"}, {}, {}),
    ("ABSOLUTE", {}, {}, {}),
    ("link", {}, {"link": "../../outside"}, {}),
    ("link", {}, {"link": "/etc"}, {}),
    ("hard", {}, {}, {"hard": "../outside"}),
]


@pytest.mark.parametrize(
    "suffix, escape",
    [
        (suffix, escape)
        for suffix in (".zip", ".tar", ".tar.gz")
        for escape in ESCAPES
        if not (suffix == ".zip" and escape[3])  # zip has no hard links
    ],
)
def test_escaping_members_are_refused_and_nothing_is_extracted(tmp_path, suffix, escape):
    name, files, links, hardlinks = escape
    if name == "ABSOLUTE":
        name = str(tmp_path / "abs.txt")
        files = {name: b"evil"}
    # A harmless member first: it must not survive the refusal either.
    archive = write_archive(
        tmp_path / f"evil{suffix}", {"ok.txt": b"fine", **files}, links, hardlinks
    )
    target = tmp_path / "deep" / "out"
    with pytest.raises(DatasetError) as err:
        safe_extract(archive, target)
    assert repr(name) in str(err.value)
    assert not target.exists()
    assert os.listdir(tmp_path / "deep") == []
    assert sorted(os.listdir(tmp_path)) == sorted([archive.name, "deep"])


@pytest.mark.parametrize("suffix", [".zip", ".tar", ".tar.gz", ".tar.xz"])
def test_truncated_archive_raises_and_leaves_no_target(tmp_path, suffix):
    archive = write_archive(
        tmp_path / f"data{suffix}", {"a.bin": os.urandom(100_000), "b.bin": os.urandom(100_000)}
    )
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(DatasetError) as err:
        safe_extract(archive, tmp_path / "out")
    assert str(archive) in str(err.value)
    assert "download it again" in str(err.value)
    assert sorted(os.listdir(tmp_path)) == [archive.name]


def test_unsupported_archive_type(tmp_path):
    (tmp_path / "data.rar").write_bytes(b"Rar!")
    with pytest.raises(DatasetError, match=r"data\.rar.*unsupported"):
        safe_extract(tmp_path / "data.rar", tmp_path / "out")


def test_non_empty_target_is_not_overwritten(tmp_path):
    archive = write_archive(tmp_path / "data.zip", {"a.txt": b"new"})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not empty"):
        safe_extract(archive, tmp_path / "out")
    assert os.listdir(tmp_path / "out") == ["mine.txt"]


def test_download_and_extract_then_works_offline(tmp_path):
    source = write_archive(tmp_path / "source.zip", {"cat/a.txt": b"alpha"})
    sha = sha256sum(source)
    target = tmp_path / "cache" / "dataset"
    assert download_and_extract(source.as_uri(), "dataset.zip", sha, target) == target
    assert (target / "cat" / "a.txt").read_bytes() == b"alpha"
    assert sha256sum(tmp_path / "cache" / "dataset.zip") == sha  # kept for re-extraction
    # Second call: already extracted, so the unreachable URL is never tried.
    assert download_and_extract(UNREACHABLE, "dataset.zip", sha, target) == target
