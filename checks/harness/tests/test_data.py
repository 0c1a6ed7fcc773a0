"""Tests of the corpus loader ``checks.data``: lookup order, checksums, downloads, messages.

Every test writes its own small files under ``tmp_path`` and registers a fixture corpus for them; the
environment is cleared first, so a CI machine's ``KATA_DATA_DIR`` or a developer's cache is never read,
and downloads only ever read ``file://`` URLs.
"""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path

import pytest

from checks import data

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


def _corpus(name: str, text: str, url: str = "file:///nonexistent/corpus.txt") -> data.Corpus:
    raw = text.encode("utf-8")
    return data.Corpus(name, hashlib.sha256(raw).hexdigest(), len(raw), url, "the test itself")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No data dir, a private empty cache, downloads off, and a home that holds nothing."""
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(data.ALLOW_DOWNLOAD_ENV, raising=False)
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def fixture_corpus(monkeypatch, tmp_path) -> data.Corpus:
    """A registered corpus named ``fixture`` whose download URL is a local file holding TEXT."""
    source = tmp_path / "source" / "input.txt"
    source.parent.mkdir()
    source.write_text(TEXT, encoding="utf-8")
    c = _corpus("fixture", TEXT, source.as_uri())
    monkeypatch.setitem(data.CORPORA, c.name, c)
    return c


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if the loader tries to open any URL."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"the loader tried to download: urlopen{args}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def _write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_known_corpora_match_the_published_files():
    shakespeare, taylor = data.CORPORA["tinyshakespeare"], data.CORPORA["taylorswift"]
    assert shakespeare.sha256 == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    assert shakespeare.size == 1_115_394
    assert (
        shakespeare.url == "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
    )
    assert taylor.sha256 == "c2e39cb822d4ae0caac22152cefc306d466e31217a9c5524e493ad2b76792f57"
    assert taylor.size == 185_768
    assert taylor.url == "https://raw.githubusercontent.com/karpathy/minbpe/master/tests/taylorswift.txt"
    assert all(c.filename == f"{c.name}.txt" for c in data.CORPORA.values())


def test_finds_the_corpus_in_the_data_dir(monkeypatch, tmp_path, fixture_corpus, no_network):
    path = _write(tmp_path / "data", "fixture", TEXT)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "data"))
    assert data.find_corpus("fixture") == path
    assert data.load_corpus("fixture") == TEXT


def test_data_dir_comes_before_the_cache(monkeypatch, tmp_path, fixture_corpus, no_network):
    in_data_dir = _write(tmp_path / "data", "fixture", TEXT)
    _write(data.cache_dir(), "fixture", TEXT)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "data"))
    assert data.find_corpus("fixture") == in_data_dir


def test_falls_back_to_the_cache_when_the_data_dir_lacks_the_file(monkeypatch, tmp_path, fixture_corpus, no_network):
    (tmp_path / "data").mkdir()
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "data"))
    cached = _write(data.cache_dir(), "fixture", TEXT)
    assert data.find_corpus("fixture") == cached


def test_default_cache_dir_is_under_home(monkeypatch, tmp_path, fixture_corpus, no_network):
    monkeypatch.delenv(data.CACHE_DIR_ENV)
    assert data.cache_dir() == tmp_path / "home" / ".cache" / "llm-katas"
    cached = _write(tmp_path / "home" / ".cache" / "llm-katas", "fixture", TEXT)
    assert data.find_corpus("fixture") == cached


def test_missing_corpus_says_how_to_provide_it(monkeypatch, tmp_path, no_network):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "data"))
    with pytest.raises(data.CorpusUnavailable) as caught:
        data.find_corpus("tinyshakespeare")
    message = str(caught.value)
    for needed in (
        "tinyshakespeare",
        data.DATA_DIR_ENV,
        "tinyshakespeare.txt",
        data.ALLOW_DOWNLOAD_ENV,
        data.CORPORA["tinyshakespeare"].sha256,
        data.CORPORA["tinyshakespeare"].url,
        str(tmp_path / "data" / "tinyshakespeare.txt"),
        str(data.cache_dir()),
    ):
        assert needed in message, f"the message should mention {needed!r}: {message}"


def test_wrong_file_in_the_data_dir_is_rejected(monkeypatch, tmp_path, no_network):
    bad = _write(tmp_path / "data", "tinyshakespeare", "not Shakespeare at all\n")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "data"))
    with pytest.raises(data.CorpusChecksumError) as caught:
        data.load_corpus("tinyshakespeare")
    message = str(caught.value)
    expected = data.CORPORA["tinyshakespeare"]
    assert str(bad) in message and "sha256" in message and expected.sha256 in message, message
    assert hashlib.sha256(bad.read_bytes()).hexdigest() in message, message
    assert "1,115,394" in message, f"the message should compare sizes: {message}"


def test_wrong_file_in_the_cache_is_rejected_not_replaced(monkeypatch, fixture_corpus):
    bad = _write(data.cache_dir(), "fixture", TEXT.upper())
    monkeypatch.setenv(data.ALLOW_DOWNLOAD_ENV, "1")
    with pytest.raises(data.CorpusChecksumError, match="sha256"):
        data.find_corpus("fixture")
    assert bad.read_text(encoding="utf-8") == TEXT.upper(), "a file the user put there must not be overwritten"


def test_downloads_into_the_cache_when_allowed(monkeypatch, tmp_path, fixture_corpus):
    monkeypatch.setenv(data.ALLOW_DOWNLOAD_ENV, "1")
    path = data.find_corpus("fixture")
    assert path == data.cache_dir() / "fixture.txt"
    assert path.read_text(encoding="utf-8") == TEXT
    assert [p.name for p in data.cache_dir().iterdir()] == ["fixture.txt"], "no temporary file may be left"
    # the second lookup is served by the cache: the source may disappear
    (tmp_path / "source" / "input.txt").unlink()
    assert data.load_corpus("fixture") == TEXT


def test_no_download_unless_allowed(monkeypatch, fixture_corpus, no_network):
    for value in ("0", "", "yes"):
        monkeypatch.setenv(data.ALLOW_DOWNLOAD_ENV, value)
        with pytest.raises(data.CorpusUnavailable, match=data.ALLOW_DOWNLOAD_ENV):
            data.find_corpus("fixture")
    assert not data.cache_dir().exists()


def test_download_with_a_wrong_checksum_saves_nothing(monkeypatch, tmp_path, fixture_corpus):
    source = tmp_path / "source" / "input.txt"
    source.write_text(TEXT[:-10], encoding="utf-8")  # a truncated download
    monkeypatch.setenv(data.ALLOW_DOWNLOAD_ENV, "1")
    with pytest.raises(data.CorpusChecksumError) as caught:
        data.find_corpus("fixture")
    assert fixture_corpus.url in str(caught.value) and fixture_corpus.sha256 in str(caught.value)
    assert list(data.cache_dir().iterdir()) == [], "a rejected download must leave nothing in the cache"


def test_failed_download_is_unavailable_with_the_reason(monkeypatch, tmp_path):
    c = _corpus("fixture", TEXT, (tmp_path / "missing.txt").as_uri())
    monkeypatch.setitem(data.CORPORA, c.name, c)
    monkeypatch.setenv(data.ALLOW_DOWNLOAD_ENV, "1")
    with pytest.raises(data.CorpusUnavailable) as caught:
        data.find_corpus("fixture")
    message = str(caught.value)
    assert "could not download" in message and c.url in message and data.DATA_DIR_ENV in message, message
    assert not any(data.cache_dir().iterdir())


def test_download_through_a_patched_opener(monkeypatch, tmp_path):
    """The real URL is fetched through urllib.request.urlopen, which a test (or a proxy setup) can replace."""
    c = _corpus("fixture", TEXT, "https://example.invalid/corpus.txt")
    monkeypatch.setitem(data.CORPORA, c.name, c)
    monkeypatch.setenv(data.ALLOW_DOWNLOAD_ENV, "1")
    opened = []

    class Response:
        def __init__(self, raw: bytes):
            self.raw = raw

        def read(self, n: int = -1) -> bytes:
            chunk, self.raw = (self.raw, b"") if n < 0 else (self.raw[:n], self.raw[n:])
            return chunk

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def fake_urlopen(url, timeout=None):
        opened.append(url)
        return Response(TEXT.encode("utf-8"))

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    assert data.load_corpus("fixture") == TEXT
    assert opened == [c.url]


def test_unknown_corpus_is_a_value_error_listing_the_known_ones():
    with pytest.raises(ValueError, match="tinyshakespeare") as caught:
        data.find_corpus("tiny-shakespeare")
    assert "tiny-shakespeare" in str(caught.value) and "taylorswift" in str(caught.value)
    assert not isinstance(caught.value, data.CorpusUnavailable), "a typo is not a missing corpus"


def test_char_level_ids_are_ranks_of_the_distinct_characters_split_90_10(fixture_corpus, monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(_write(tmp_path / "data", "fixture", TEXT).parent))
    train, val, vocab = data.char_level("fixture")
    chars = sorted(set(TEXT))
    assert vocab == len(chars)
    assert "".join(chars[i] for i in train + val) == TEXT
    assert len(train) == int(0.9 * len(TEXT)) and len(val) == len(TEXT) - len(train)
