"""The disk cache: location, atomic writes, corrupt entries, unwritable folders, info/clear, the CLI."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from customgrad import cache
from customgrad.errors import CacheWarning, UsageError

SOURCE = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("CUSTOMGRAD_CACHE_DIR", str(folder))
    return folder


def _entry_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*/*.entry"))


def test_directory_follows_environment_variables(tmp_path, monkeypatch):
    monkeypatch.delenv("CUSTOMGRAD_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.directory() == tmp_path / "xdg" / "customgrad"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.directory() == tmp_path / "home" / ".cache" / "customgrad"
    monkeypatch.setenv("CUSTOMGRAD_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.directory() == tmp_path / "explicit"


def test_store_then_load_returns_the_same_bytes_and_other_keys_miss(cache_dir):
    assert cache.load("function", "x**2") is None
    cache.store("function", ("x**2", "grads={}"), b"\x00payload\xff")
    assert cache.load("function", ("x**2", "grads={}")) == b"\x00payload\xff"
    assert cache.load("function", ("x**2", "grads={x: 1}")) is None
    assert cache.load("kernels", ("x**2", "grads={}")) is None
    assert len(_entry_files(cache_dir)) == 1


def test_bad_namespace_key_or_data_is_a_usage_error(cache_dir):
    with pytest.raises(UsageError, match="namespace"):
        cache.store("../escape", "k", b"")
    with pytest.raises(UsageError, match="key"):
        cache.load("function", ["x", 1])
    with pytest.raises(UsageError, match="bytes"):
        cache.store("function", "k", "text")


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw[: len(raw) - 3],  # truncated
        lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]),  # edited by hand
        lambda raw: raw.replace(b"customgrad-cache 1", b"customgrad-cache 9"),  # another format
        lambda raw: b"",  # empty
        lambda raw: b"\x89PNG garbage\n\n\n",  # something else entirely
    ],
    ids=["truncated", "edited", "other-format", "empty", "garbage"],
)
def test_damaged_entries_are_ignored_and_rebuilt(cache_dir, damage):
    cache.store("function", "key", b"generated code " * 10)
    (path,) = _entry_files(cache_dir)
    path.write_bytes(damage(path.read_bytes()))
    assert cache.load("function", "key") is None
    cache.store("function", "key", b"rebuilt")
    assert cache.load("function", "key") == b"rebuilt"


def test_an_entry_renamed_to_another_key_is_not_read(cache_dir):
    cache.store("function", "a", b"for a")
    cache.store("function", "b", b"for b")
    paths = _entry_files(cache_dir)
    data = [path.read_bytes() for path in paths]
    paths[0].write_bytes(data[1])
    assert sorted(filter(None, [cache.load("function", "a"), cache.load("function", "b")])) in ([b"for a"], [b"for b"])


_WRITER = """
import sys
from customgrad import cache
worker = int(sys.argv[1])
for i in range(60):
    cache.store("function", "shared", (b"%d" % worker) * 5000)
    data = cache.load("function", "shared")
    assert data is not None and len(data) == 5000 and len(set(data)) == 1, "torn read"
print("ok")
"""


def test_concurrent_writers_of_one_entry_all_succeed(cache_dir):
    environment = {**os.environ, "PYTHONPATH": SOURCE}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(worker)],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for worker in range(1, 4)
    ]
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        assert out.strip() == "ok"
    data = cache.load("function", "shared")
    assert data in {(b"%d" % worker) * 5000 for worker in range(1, 4)}
    assert not list(cache_dir.glob("*/*.tmp")), "temporary files left behind"


def _assert_memory_only_with_one_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache.store("function", "one", b"1")
        cache.store("function", "two", b"2")
    assert [type(w.message) for w in caught] == [CacheWarning]
    assert "CUSTOMGRAD_CACHE_DIR" in str(caught[0].message)
    assert cache.load("function", "one") == b"1"
    assert cache.load("function", "two") == b"2"
    assert cache.info().in_memory == 2


def test_unusable_folder_keeps_entries_in_memory_with_one_warning(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CUSTOMGRAD_CACHE_DIR", str(blocker / "cache"))
    _assert_memory_only_with_one_warning()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions and a non-root user")
def test_read_only_folder_keeps_entries_in_memory_with_one_warning(tmp_path, monkeypatch):
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o500)
    monkeypatch.setenv("CUSTOMGRAD_CACHE_DIR", str(folder))
    try:
        _assert_memory_only_with_one_warning()
    finally:
        folder.chmod(0o700)


def test_info_counts_entries_and_clear_removes_only_entries(cache_dir):
    cache.store("function", "a", b"12345")
    cache.store("function", "b", b"1")
    cache.store("kernels", "a", b"123")
    stale = cache_dir / "function" / ("." + "0" * 64 + ".abc.tmp")
    stale.write_bytes(b"half")
    foreign = cache_dir / "function" / "notes.txt"
    foreign.write_text("mine")
    summary = cache.info()
    assert summary.directory == cache_dir
    assert summary.namespaces["function"][0] == 2
    assert summary.namespaces["kernels"][0] == 1
    assert summary.entries == 3 and summary.size > 9
    assert cache.clear() == 3
    assert cache.info().entries == 0
    assert cache.load("function", "a") is None
    assert not stale.exists()
    assert foreign.read_text() == "mine"


def test_cli_cache_info_and_clear(cache_dir):
    cache.store("function", "a", b"x")
    environment = {**os.environ, "PYTHONPATH": SOURCE}

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "customgrad", "cache", *args], env=environment, capture_output=True, text=True
        )

    shown = run("info")
    assert shown.returncode == 0, shown.stderr
    assert str(cache_dir) in shown.stdout and "function: 1" in shown.stdout
    cleared = run("clear")
    assert cleared.returncode == 0 and "removed 1 entry" in cleared.stdout
    assert "entries: 0" in run("info").stdout
    bad = run("purge")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
