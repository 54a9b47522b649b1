"""Download a MovieLens archive from its public home, verify it, unpack it.

For users with a network only: tests never download.  Verification: the
archive's SHA-256 is computed and compared with a pinned value where we have
one; for archives where we only have GroupLens's published MD5 (their
``<archive>.md5`` files), the MD5 is checked and the SHA-256 is recorded in
``SHA256SUMS`` beside the data, so later copies can be checked against it.
A mismatch deletes the download and raises :class:`DownloadError`.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

BASE_URL = "https://files.grouplens.org/datasets/movielens"

# name -> (archive, sha256 or None, md5 or None)
ARCHIVES = {
    "ml-100k": ("ml-100k.zip", None, "0e33842e24a9c977be4e0107933c0723"),
    "ml-1m": ("ml-1m.zip", None, "c4d9eecfca2ab87c1945afe126590906"),
    "ml-latest-small": (
        "ml-latest-small.zip",
        "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
        None,
    ),
    "ml-25m": ("ml-25m.zip", None, "6b51fb2759a8657d3bfcbfc42b592ada"),
    "ml-32m": ("ml-32m.zip", None, None),
}


class DownloadError(RuntimeError):
    pass


def _digests(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5()  # noqa: S324 - md5 only to match GroupLens's published sums
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def verify(path: Path, sha256: str | None, md5: str | None) -> str:
    """Check ``path`` against the pinned digests; return its SHA-256."""
    got_sha, got_md5 = _digests(path)
    if sha256 and got_sha != sha256:
        raise DownloadError(f"{path.name}: SHA-256 {got_sha} does not match the expected {sha256}")
    if md5 and got_md5 != md5:
        raise DownloadError(f"{path.name}: MD5 {got_md5} does not match GroupLens's published {md5}")
    return got_sha


def download(name: str, dest: str, sha256: str | None = None, base_url: str = BASE_URL) -> Path:
    """Fetch ``name`` (e.g. ``ml-100k``) into ``dest/<name>/``; return that directory."""
    if name not in ARCHIVES:
        raise KeyError(f"unknown dataset {name!r}; one of {', '.join(ARCHIVES)}")
    archive, pinned_sha, md5 = ARCHIVES[name]
    target = Path(dest) / name
    if target.is_dir() and any(target.iterdir()):
        log.info("%s already present at %s", name, target)
        return target
    url = f"{base_url}/{archive}"
    with tempfile.TemporaryDirectory() as tmp:
        zpath = Path(tmp) / archive
        log.info("downloading %s", url)
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, zpath.open("wb") as out:  # noqa: S310
                shutil.copyfileobj(resp, out)
        except OSError as exc:
            raise DownloadError(f"could not download {url}: {exc}") from exc
        digest = verify(zpath, sha256 or pinned_sha, md5)
        with zipfile.ZipFile(zpath) as zf:
            zf.extractall(tmp)
        unpacked = Path(tmp) / name
        if not unpacked.is_dir():
            raise DownloadError(f"{archive} did not contain a {name}/ folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(unpacked), target)
    with (Path(dest) / "SHA256SUMS.archives").open("a") as fh:
        fh.write(f"{digest}  {archive}\n")
    log.info("%s verified (sha256 %s) and unpacked to %s", archive, digest, target)
    return target
