"""Find a text corpus by name, for challenges and benchmarks (standard library only).

    >>> from checks.data import load_corpus
    >>> text = load_corpus("tinyshakespeare")

Where a corpus ``<name>`` is looked for, in order:

1. ``$KATA_DATA_DIR/<name>.txt`` when the environment variable ``KATA_DATA_DIR`` names a directory
   (CI sets ``KATA_DATA_DIR=../shared/data``);
2. the cache: ``$KATA_CACHE_DIR/<name>.txt``, or ``~/.cache/llm-katas/<name>.txt`` when ``KATA_CACHE_DIR``
   is unset;
3. a download from the corpus's URL into the cache - only when ``KATA_ALLOW_DOWNLOAD=1`` (checks never
   reach the network unless you ask them to).

A file that is found (or downloaded) must have the corpus's sha256: a wrong or truncated file is
rejected with ``CorpusChecksumError`` instead of silently training on something else. A corpus that is
nowhere raises ``CorpusUnavailable``, whose message says how to provide it; checks that need one skip
with that message (``pytest.skip(str(err))``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

DATA_DIR_ENV = "KATA_DATA_DIR"
CACHE_DIR_ENV = "KATA_CACHE_DIR"
ALLOW_DOWNLOAD_ENV = "KATA_ALLOW_DOWNLOAD"
DOWNLOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class Corpus:
    name: str  # also the file name: <name>.txt
    sha256: str  # hex digest of the file's bytes
    size: int  # bytes, to tell a truncated download from a different file
    url: str  # where a download fetches it from
    source: str  # human-readable origin, for messages

    @property
    def filename(self) -> str:
        return f"{self.name}.txt"


CORPORA: dict[str, Corpus] = {
    c.name: c
    for c in (
        Corpus(
            "tinyshakespeare",
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            1_115_394,
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            "karpathy/char-rnn, data/tinyshakespeare/input.txt",
        ),
        Corpus(
            "taylorswift",
            "c2e39cb822d4ae0caac22152cefc306d466e31217a9c5524e493ad2b76792f57",
            185_768,
            "https://raw.githubusercontent.com/karpathy/minbpe/master/tests/taylorswift.txt",
            "karpathy/minbpe, tests/taylorswift.txt",
        ),
    )
}


class CorpusError(Exception):
    """A corpus cannot be used."""


class CorpusUnavailable(CorpusError):
    """The corpus is not on this machine and may not (or could not) be downloaded."""


class CorpusChecksumError(CorpusError, ValueError):
    """A file with the corpus's name holds other bytes than the corpus (wrong file, truncated download)."""


def corpus(name: str) -> Corpus:
    """The known corpus ``name``; ``ValueError`` listing the known ones otherwise."""
    try:
        return CORPORA[name]
    except KeyError:
        raise ValueError(f"unknown corpus {name!r}; known corpora: {', '.join(sorted(CORPORA))}") from None


def cache_dir() -> Path:
    """``$KATA_CACHE_DIR``, or ``~/.cache/llm-katas``."""
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "llm-katas"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(path: Path, c: Corpus, remedy: str) -> Path:
    """``path`` when its bytes are the corpus; ``CorpusChecksumError`` saying what to do otherwise."""
    actual = _sha256(path)
    if actual != c.sha256:
        size = path.stat().st_size
        raise CorpusChecksumError(
            f"{path} is not the {c.name} corpus: its sha256 is {actual}, expected {c.sha256} "
            f"(it has {size:,} bytes, the corpus {c.size:,}). {remedy}"
        )
    return path


def _download(c: Corpus, target: Path) -> None:
    """Fetch ``c.url`` into ``target`` atomically: a failed or wrong download leaves nothing behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{c.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(c.url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
        _verified(tmp, c, f"The download from {c.url} is not the expected file; nothing was saved.")
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError) as err:
        raise CorpusUnavailable(f"could not download the {c.name} corpus from {c.url}: {err}. "
                                f"{_how_to_provide(c)}") from err
    finally:
        tmp.unlink(missing_ok=True)


def _how_to_provide(c: Corpus) -> str:
    return (
        f"To provide it, do one of: set {DATA_DIR_ENV} to a directory holding {c.filename} "
        f"(sha256 {c.sha256}, {c.size:,} bytes, from {c.source}); put that file at "
        f"{cache_dir() / c.filename}; or set {ALLOW_DOWNLOAD_ENV}=1 to download it from {c.url}."
    )


def find_corpus(name: str) -> Path:
    """The path of a verified copy of corpus ``name`` (see the module docstring for where it looks)."""
    c = corpus(name)
    looked = []
    data_dir = os.environ.get(DATA_DIR_ENV)
    if data_dir:
        path = Path(data_dir).expanduser() / c.filename
        if path.is_file():
            return _verified(path, c, f"Point {DATA_DIR_ENV} at a directory with the right file.")
        looked.append(f"{path} ({DATA_DIR_ENV}; missing)")
    else:
        looked.append(f"{DATA_DIR_ENV} (not set)")
    cached = cache_dir() / c.filename
    if cached.is_file():
        return _verified(cached, c, f"Delete it to fetch it again (with {ALLOW_DOWNLOAD_ENV}=1).")
    looked.append(f"{cached} (cache; missing)")
    if os.environ.get(ALLOW_DOWNLOAD_ENV) == "1":
        _download(c, cached)
        return cached
    raise CorpusUnavailable(
        f"the {c.name} corpus is not available; looked in: {', '.join(looked)}; downloads are off "
        f"({ALLOW_DOWNLOAD_ENV} is not 1). {_how_to_provide(c)}"
    )


def load_corpus(name: str) -> str:
    """The text of corpus ``name`` (UTF-8), found and verified by ``find_corpus``."""
    return find_corpus(name).read_text(encoding="utf-8")


def char_level(name: str, val_fraction: float = 0.1) -> tuple[list[int], list[int], int]:
    """Corpus ``name`` as character ids, split as nanoGPT's shakespeare_char prepares it: each character's id is
    its rank among the corpus's distinct characters, the first 90% of the text trains and the last 10% validates.

    Returns ``(train_ids, val_ids, vocab_size)``; raises ``CorpusUnavailable`` as ``load_corpus`` does.
    """
    text = load_corpus(name)
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = [index[c] for c in text]
    split = int((1 - val_fraction) * len(ids))
    return ids[:split], ids[split:], len(chars)
