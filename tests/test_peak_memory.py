"""The anonymous-memory peak that `indexmem-train auto` reports beside ru_maxrss."""

import time

import numpy as np
import pytest
from indexmem.train.peak_memory import AnonPeak, anon_bytes, status_bytes

MB = 1 << 20
linux_only = pytest.mark.skipif(anon_bytes() is None, reason="no RssAnon in /proc/self/status")


def test_rss_anon_is_read_in_bytes_and_missing_means_unknown(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmRSS:\t  900 kB\nRssAnon:\t  512 kB\nRssFile:\t  388 kB\n")
    assert anon_bytes(status) == 512 * 1024
    assert status_bytes("VmRSS", status) == 900 * 1024  # the server benchmark's figure
    status.write_text("Name:\tpython\nVmRSS:\t  900 kB\n")
    assert anon_bytes(status) is None
    assert anon_bytes(tmp_path / "absent") is None


@linux_only
def test_the_peak_sees_an_array_that_came_and_went():
    with AnonPeak(interval=0.05) as peak:
        before = anon_bytes()
        block = np.ones(300 * MB, dtype=np.uint8)  # every page written
        time.sleep(0.3)
        del block
        time.sleep(0.1)
    assert peak.peak - before >= 280 * MB
    assert anon_bytes() < peak.peak - 200 * MB  # gone now; the peak stays


@linux_only
def test_the_pages_of_a_mapped_file_are_not_counted(tmp_path):
    path = tmp_path / "features.bin"
    with open(path, "wb") as f:
        for _ in range(300):
            f.write(np.full(MB, 7, dtype=np.uint8).tobytes())
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    with AnonPeak(interval=0.05) as peak:
        before = anon_bytes()
        for start in range(0, len(mapped), 16 * MB):  # every page read: resident, file-backed
            assert int(mapped[start : start + 16 * MB].max()) == 7
        time.sleep(0.2)
    assert peak.peak - before < 64 * MB
    del mapped


@linux_only
def test_a_sampler_used_twice_samples_both_times():
    sampler = AnonPeak(interval=0.05)
    for _ in range(2):
        with sampler:
            assert sampler._thread.is_alive()
            time.sleep(0.12)
            assert sampler._thread.is_alive()  # not stopped by the first exit's signal


@linux_only
def test_free_heap_pages_go_back_to_the_system():
    from indexmem.train.peak_memory import release_free_memory

    chunks = [b"x" * 100_000 for _ in range(2000)]  # below glibc's mmap threshold: on the heap
    keep = chunks[-1]  # the heap's top stays in use, so free() alone cannot shrink it
    del chunks
    before = anon_bytes()
    release_free_memory()
    assert before - anon_bytes() >= 100 * MB
    assert keep[:1] == b"x"
