"""Downloading, checksums and safe extraction of the IMDB archive."""

import hashlib
import io
import tarfile

import pytest

import helpers
from conftest import imdb_files, make_archive


def md5(data):
    return hashlib.md5(data).hexdigest()


def test_download_writes_the_file_and_checks_its_md5(http_server, tmp_path):
    body = b"archive bytes" * 1000
    http_server.routes["/a.tar.gz"] = (body, None)
    dest = helpers.download(f"{http_server.url}/a.tar.gz", tmp_path / "a.tar.gz", md5=md5(body), progress=False)
    assert dest.read_bytes() == body
    assert list(tmp_path.iterdir()) == [dest]


def test_checksum_mismatch_deletes_the_file_and_names_both_checksums(http_server, tmp_path):
    http_server.routes["/a.tar.gz"] = (b"tampered", None)
    with pytest.raises(ValueError, match=f"expected MD5 {'0' * 32}, got {md5(b'tampered')}"):
        helpers.download(f"{http_server.url}/a.tar.gz", tmp_path / "a.tar.gz", md5="0" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_download_leaves_nothing_that_looks_complete(http_server, tmp_path):
    http_server.routes["/a.tar.gz"] = (b"only part", 10_000)  # the server promises more than it sends
    with pytest.raises((ConnectionError, OSError)):
        helpers.download(f"{http_server.url}/a.tar.gz", tmp_path / "a.tar.gz", progress=False, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_no_network_names_the_url_and_the_local_archive_option(tmp_path):
    url = "http://127.0.0.1:9/aclImdb_v1.tar.gz"  # port 9 (discard) is closed here
    with pytest.raises(ConnectionError, match="127.0.0.1:9.*imdb_archive.*IMDB_ARCHIVE"):
        helpers.download(url, tmp_path / "a.tar.gz", progress=False, timeout=5)


def test_prepare_imdb_downloads_once_and_then_reuses_the_extraction(http_server, tmp_path):
    archive = make_archive(tmp_path / "src.tar.gz", imdb_files())
    body = archive.read_bytes()
    http_server.routes["/imdb.tar.gz"] = (body, None)
    data_dir = tmp_path / "data"
    root = helpers.prepare_imdb(data_dir=data_dir, url=f"{http_server.url}/imdb.tar.gz", md5=md5(body))
    texts, labels = helpers.read_imdb(root, "train")
    assert len(texts) == 4 and labels == [0, 0, 1, 1]
    del http_server.routes["/imdb.tar.gz"]  # a second call must not need the server
    assert helpers.prepare_imdb(data_dir=data_dir, url=f"{http_server.url}/imdb.tar.gz") == root


def test_a_local_archive_is_extracted_without_a_download(tiny_archive, tmp_path):
    root = helpers.prepare_imdb(tiny_archive, data_dir=tmp_path / "data")
    assert (root / "train" / "pos" / "0_5.txt").read_text().startswith("A great film")
    assert not (tmp_path / "data" / "aclImdb_v1.tar.gz").exists()


def test_a_missing_local_archive_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.tar.gz"):
        helpers.extract_imdb(tmp_path / "nowhere.tar.gz", tmp_path / "data")


def test_a_truncated_archive_gives_a_clear_error_and_no_dataset(tiny_archive, tmp_path):
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(tiny_archive.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated or not a valid"):
        helpers.extract_imdb(truncated, tmp_path / "data")
    assert not (tmp_path / "data" / "aclImdb").exists()


def _member(name, kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize("bad, reason", [
    (_member("/etc/evil"), "unsafe path"),
    (_member("aclImdb/../../evil"), "unsafe path"),
    (_member("aclImdb/link", tarfile.SYMTYPE, "/etc/passwd"), "link or device"),
    (_member("aclImdb/hard", tarfile.LNKTYPE, "aclImdb/README"), "link or device"),
    (_member("aclImdb/dev", tarfile.CHRTYPE), "link or device"),
])
def test_unsafe_members_are_refused_before_anything_is_written(tmp_path, bad, reason):
    archive = make_archive(tmp_path / "bad.tar.gz", imdb_files(), extra_members=[bad])
    data_dir = tmp_path / "data"
    with pytest.raises(ValueError, match=reason):
        helpers.extract_imdb(archive, data_dir)
    assert not data_dir.exists()


def test_an_archive_without_the_imdb_layout_says_what_is_missing(tmp_path):
    files = {k: v for k, v in imdb_files().items() if "/test/neg/" not in k}
    archive = make_archive(tmp_path / "partial.tar.gz", files)
    with pytest.raises(ValueError, match="lacks aclImdb/test/neg"):
        helpers.extract_imdb(archive, tmp_path / "data")


def test_an_interrupted_extraction_is_not_trusted_and_is_redone(tiny_archive, tmp_path, monkeypatch):
    data_dir = tmp_path / "data"

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(tarfile.TarFile, "extractall", crash)
        with pytest.raises(KeyboardInterrupt):
            helpers.extract_imdb(tiny_archive, data_dir)
    assert not (data_dir / "aclImdb").exists()
    assert [p.name for p in data_dir.iterdir()] == []  # the staging folder is gone too
    root = helpers.extract_imdb(tiny_archive, data_dir)
    assert (root / ".complete").exists()
    assert len(helpers.read_imdb(root, "test")[0]) == 4


def test_a_half_extracted_folder_from_an_older_crash_is_replaced(tiny_archive, tmp_path):
    stale = tmp_path / "data" / "aclImdb" / "train" / "pos"
    stale.mkdir(parents=True)
    (stale / "junk.txt").write_text("half")
    root = helpers.prepare_imdb(tiny_archive, data_dir=tmp_path / "data")
    assert not (root / "train" / "pos" / "junk.txt").exists()


def test_a_corrupt_archive_gives_a_clear_error(tmp_path):
    corrupt = tmp_path / "corrupt.tar.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00" + b"not really gzip data" * 50)
    with pytest.raises(ValueError, match="truncated or not a valid"):
        helpers.extract_imdb(corrupt, tmp_path / "data")


def test_an_archive_given_explicitly_is_never_ignored_for_an_earlier_extraction(tiny_archive, tmp_path):
    data_dir = tmp_path / "data"
    root = helpers.prepare_imdb(tiny_archive, data_dir=data_dir)
    assert helpers.extraction_origin(root) == {"archive": tiny_archive.name, "md5": helpers.md5sum(tiny_archive)}
    stamp = (root / ".complete").stat().st_mtime_ns
    messages = []
    assert helpers.prepare_imdb(tiny_archive, data_dir=data_dir, log=messages.append) == root
    assert messages == [] and (root / ".complete").stat().st_mtime_ns == stamp  # the same archive: reused
    files = imdb_files()
    files["aclImdb/train/pos/0_5.txt"] = "Another copy, another text."
    other = make_archive(tmp_path / "other.tar.gz", files)
    helpers.prepare_imdb(other, data_dir=data_dir, log=messages.append)
    assert (root / "train" / "pos" / "0_5.txt").read_text() == "Another copy, another text."
    assert len(messages) == 1 and "was extracted from aclImdb_v1.tar.gz, not from" in messages[0]
    assert helpers.extraction_origin(root)["md5"] == helpers.md5sum(other)


def test_an_extraction_of_unknown_origin_is_replaced_by_the_archive_given(tiny_archive, tmp_path):
    root = tmp_path / "data" / "aclImdb"
    (root / "train" / "pos").mkdir(parents=True)
    (root / ".complete").touch()  # an extraction that recorded no archive
    messages = []
    helpers.prepare_imdb(tiny_archive, data_dir=tmp_path / "data", log=messages.append)
    assert "an unknown archive" in messages[0]
    assert (root / "train" / "pos" / "0_5.txt").exists()


# --------------------------------------------------------------------------- archive bombs (issue 32)
class _Zeros(io.RawIOBase):
    """A file of `size` zero bytes that exists only as it is read."""

    def __init__(self, size):
        self.left = size

    def readable(self):
        return True

    def readinto(self, buffer):
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def test_the_budget_is_a_little_above_the_real_archive():
    # measured on aclImdb_v1.tar.gz: 100,016 members, 138,643,348 bytes of files
    assert 100_016 < helpers.IMDB_MAX_MEMBERS <= 120_000 and 138_643_348 < helpers.IMDB_MAX_BYTES <= 180_000_000


def test_a_bomb_with_the_imdb_layout_is_refused_and_the_earlier_extraction_is_kept(tiny_archive, tmp_path):
    data_dir = tmp_path / "data"
    root = helpers.extract_imdb(tiny_archive, data_dir)
    before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz", compresslevel=1) as tar:
        for name, text in imdb_files().items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
        info = tarfile.TarInfo("aclImdb/train/unsup/0_0.txt")
        info.size = helpers.IMDB_MAX_BYTES + 1  # 160 MB of zeros: about 0.2 MB compressed
        tar.addfile(info, _Zeros(info.size))
    assert bomb.stat().st_size < 2_000_000
    with pytest.raises(ValueError, match=r"bomb.tar.gz expands to more than 160,000,000 bytes.*before anything"):
        helpers.extract_imdb(bomb, data_dir)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == before
    assert helpers.extraction_origin(root)["md5"] == md5(tiny_archive.read_bytes())
    assert [p.name for p in data_dir.iterdir()] == ["aclImdb"]  # no staging folder left behind


def test_an_archive_of_more_members_than_the_budget_is_refused(tmp_path):
    files = imdb_files() | {f"aclImdb/train/unsup/{i}_0.txt": "" for i in range(30)}
    archive = make_archive(tmp_path / "many.tar.gz", files)
    with pytest.raises(ValueError, match="many.tar.gz holds more than 20 members"):
        helpers.extract_imdb(archive, tmp_path / "data", max_members=20)
    assert not (tmp_path / "data").exists()


def test_only_gzip_is_read_whatever_the_name_says(tmp_path):
    archive = tmp_path / "aclImdb_v1.tar.gz"
    with tarfile.open(archive, "w:bz2") as tar:
        for name, text in imdb_files().items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    with pytest.raises(ValueError, match="not a valid tar.gz archive"):
        helpers.extract_imdb(archive, tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_a_folder_given_as_the_archive_is_called_a_folder(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder"):
        helpers.extract_imdb(tmp_path, tmp_path / "data")


def _label_of_each_review_by_its_folder(root, split):
    """{text: 1 for pos/, 0 for neg/} read straight from the files, not through read_imdb."""
    return {path.read_text(encoding="utf-8"): int(folder == "pos")
            for folder in ("neg", "pos") for path in (root / split / folder).glob("*.txt")}


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_label_of_the_sample_is_the_folder_its_review_came_from(split):
    """Issue 33: a test split read with flipped labels inverted every test figure, and nothing noticed."""
    texts, labels = helpers.read_imdb(helpers.SAMPLE_DIR, split)
    by_folder = _label_of_each_review_by_its_folder(helpers.SAMPLE_DIR, split)
    assert len(texts) == len(by_folder) == 200  # 100 of each label, every text distinct
    assert labels == [by_folder[text] for text in texts]


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_label_of_the_archive_is_its_folder_and_its_word(tiny_archive, tmp_path, split):
    root = helpers.prepare_imdb(tiny_archive, data_dir=tmp_path / "data")
    texts, labels = helpers.read_imdb(root, split)
    assert labels == [0, 0, 1, 1]
    assert labels == [_label_of_each_review_by_its_folder(root, split)[text] for text in texts]
    assert labels == [int("great" in text) for text in texts]  # imdb_files: positive reviews say great
