"""Named datasets and how to fetch them: the real origin with its sha256, or a local mirror.

Where a file comes from, in order:
  1. `--source PATH` (a file, or a directory laid out like the mirror);
  2. `$LLMKIT_DATA_MIRROR`, a directory laid out like ../shared/data (`tinyshakespeare/input.txt`);
  3. the original URL.
Whatever the origin, the sha256 is checked while copying, and the file appears at its destination
only when complete and verified (atomic rename).
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from llmkit.atomic import atomic_open
from llmkit.console import say
from llmkit.errors import RUN_FAILED, LlmkitError

MIRROR_ENV = "LLMKIT_DATA_MIRROR"


@dataclass(frozen=True)
class RemoteFile:
    url: str
    sha256: str
    mirror_path: str  # where the file lies inside a mirror directory
    filename: str  # its name under <data root>/raw/<dataset>/


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    files: tuple[RemoteFile, ...]

    @property
    def text_file(self) -> str:
        """The file `llmkit tokenize` reads."""
        return self.files[0].filename


DATASETS = {
    "shakespeare": Dataset(
        name="shakespeare",
        description="Tiny Shakespeare: 1.1 MB of plays, 65 distinct characters (karpathy/char-rnn)",
        files=(
            RemoteFile(
                url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
                sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
                mirror_path="tinyshakespeare/input.txt",
                filename="input.txt",
            ),
        ),
    ),
}


def get_dataset(name: str) -> Dataset:
    if name not in DATASETS:
        import difflib

        close = difflib.get_close_matches(name, DATASETS, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known datasets: {', '.join(DATASETS)}"
        raise LlmkitError(f"unknown dataset '{name}'", hint=hint)
    return DATASETS[name]


def raw_dir(data_root: str | Path, dataset: Dataset) -> Path:
    return Path(data_root) / "raw" / dataset.name


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _copy_verified(reader: BinaryIO, dest: Path, remote: RemoteFile, origin: str) -> None:
    digest = hashlib.sha256()
    with atomic_open(dest, "wb") as out:
        for block in iter(lambda: reader.read(1 << 20), b""):
            digest.update(block)
            out.write(block)
        if digest.hexdigest() != remote.sha256:
            # Raising inside atomic_open removes the temporary file: nothing unverified remains.
            raise LlmkitError(
                f"{origin} has the wrong content for {remote.filename}: "
                f"sha256 {digest.hexdigest()}, expected {remote.sha256}",
                hint="the file is corrupt or a different version; fetch a fresh copy",
                exit_code=RUN_FAILED,
            )


def _local_candidates(remote: RemoteFile, source: Path | None) -> list[Path]:
    if source is not None:
        if source.is_file():
            return [source]
        return [source / remote.mirror_path, source / remote.filename]
    mirror = os.environ.get(MIRROR_ENV)
    return [Path(mirror) / remote.mirror_path] if mirror else []


def _fetch(remote: RemoteFile, dest: Path, source: Path | None) -> None:
    for candidate in _local_candidates(remote, source):
        if candidate.is_file():
            say(f"copying {candidate} -> {dest}")
            with open(candidate, "rb") as f:
                _copy_verified(f, dest, remote, str(candidate))
            return
    if source is not None:
        raise LlmkitError(f"--source {source}: no {remote.mirror_path} or {remote.filename} there")
    if os.environ.get(MIRROR_ENV):
        say(f"{MIRROR_ENV}={os.environ[MIRROR_ENV]} has no {remote.mirror_path}; downloading")
    say(f"downloading {remote.url}")
    try:
        with urllib.request.urlopen(remote.url, timeout=60) as response:
            _copy_verified(response, dest, remote, remote.url)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        raise LlmkitError(
            f"could not download {remote.url}: {reason}",
            hint=f"offline? set {MIRROR_ENV} to a directory laid out like ../shared/data "
            f"(it holds {remote.mirror_path}), or pass --source FILE",
            exit_code=RUN_FAILED,
        ) from None


def download(name: str, data_root: str | Path = "data", source: str | Path | None = None,
             force: bool = False) -> list[Path]:
    """Make every file of dataset `name` present and verified under <data_root>/raw/<name>/."""
    dataset = get_dataset(name)
    source = Path(source) if source is not None else None
    if source is not None and not source.exists():
        raise LlmkitError(f"--source {source}: no such file or directory")
    paths = []
    for remote in dataset.files:
        dest = raw_dir(data_root, dataset) / remote.filename
        if dest.is_file() and not force:
            if file_sha256(dest) == remote.sha256:
                say(f"{dest} is already present and verified: nothing to do")
                paths.append(dest)
                continue
            say(f"{dest} does not match its sha256; fetching it again")
        _fetch(remote, dest, source)
        say(f"verified sha256 {remote.sha256[:12]}… -> {dest}")
        paths.append(dest)
    return paths


def is_downloaded(name: str, data_root: str | Path) -> bool:
    dataset = get_dataset(name)
    return all((raw_dir(data_root, dataset) / f.filename).is_file() for f in dataset.files)

