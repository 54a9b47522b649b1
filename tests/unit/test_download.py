"""The downloader, against a local file:// 'server' (tests never use the network)."""

import hashlib
import zipfile

import pytest

from recsys_spark.io import download as D


def _archive(tmp_path, name="ml-100k"):
    src = tmp_path / "server"
    src.mkdir()
    z = src / f"{name}.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(f"{name}/u.data", "1\t1\t5\t1\n")
    return src, z


def test_download_verifies_and_unpacks(tmp_path, monkeypatch):
    src, z = _archive(tmp_path)
    sha = hashlib.sha256(z.read_bytes()).hexdigest()
    md5 = hashlib.md5(z.read_bytes()).hexdigest()
    monkeypatch.setitem(D.ARCHIVES, "ml-100k", ("ml-100k.zip", None, md5))
    out = D.download("ml-100k", str(tmp_path / "data"), base_url=src.as_uri())
    assert (out / "u.data").read_text() == "1\t1\t5\t1\n"
    assert sha in (tmp_path / "data" / "SHA256SUMS.archives").read_text()


def test_checksum_mismatch_is_refused(tmp_path, monkeypatch):
    src, _ = _archive(tmp_path)
    monkeypatch.setitem(D.ARCHIVES, "ml-100k", ("ml-100k.zip", "0" * 64, None))
    with pytest.raises(D.DownloadError, match="SHA-256 .* does not match"):
        D.download("ml-100k", str(tmp_path / "data"), base_url=src.as_uri())
    assert not (tmp_path / "data" / "ml-100k").exists()


def test_unknown_dataset():
    with pytest.raises(KeyError, match="unknown dataset"):
        D.download("ml-7", "/tmp")
