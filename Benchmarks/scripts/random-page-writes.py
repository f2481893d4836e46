#!/usr/bin/env python3
"""Random 4 KB writes into a cached file, by how the file's page cache was filled.

What a B-tree commit does to its data file (LMDB writes each dirty page with pwrite): on a
kernel that caches files in large folios, a small write into a large folio costs more than one
into a 4 KB folio. Prints, for each way of filling the cache, the cost of one random 4 KB pwrite
and of 1,500 random pwrites followed by fdatasync. See docs/benchmarks.md (twelfth session).

    python3 Benchmarks/scripts/random-page-writes.py [DIRECTORY]
"""
import mmap
import os
import random
import sys
import time

SIZE = 600 * 1024 * 1024
PAGE = 4096


def fill(fd, mode):
    if mode == "4k writes":
        page = b"x" * PAGE
        for offset in range(0, SIZE, PAGE):
            os.pwrite(fd, page, offset)
    else:
        block = b"y" * (1 << 20)
        for offset in range(0, SIZE, 1 << 20):
            os.pwrite(fd, block, offset)
        if mode == "1 MB writes, then read through mmap":
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            mapped = mmap.mmap(fd, SIZE, prot=mmap.PROT_READ)
            total = 0
            for offset in range(0, SIZE, PAGE):
                total += mapped[offset]
            mapped.close()
    os.fsync(fd)


def measure(directory, mode):
    path = os.path.join(directory, "random-page-writes.bin")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        fill(fd, mode)
        rng = random.Random(1)
        page = b"z" * PAGE
        writes = 100_000
        start = time.perf_counter()
        for _ in range(writes):
            os.pwrite(fd, page, rng.randrange(SIZE // PAGE) * PAGE)
        per_write = (time.perf_counter() - start) / writes
        os.fdatasync(fd)
        cycles = 40
        start = time.perf_counter()
        for _ in range(cycles):
            for _ in range(1500):
                os.pwrite(fd, page, rng.randrange(SIZE // PAGE) * PAGE)
            os.fdatasync(fd)
        per_cycle = (time.perf_counter() - start) / cycles
        print(f"{mode}: {per_write * 1e6:.2f} us per random 4 KB pwrite; "
              f"{per_cycle * 1e3:.1f} ms per 1,500 random pwrites + fdatasync")
    finally:
        os.close(fd)
        os.unlink(path)


if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else "."
    for mode in ("4k writes", "1 MB writes", "1 MB writes, then read through mmap"):
        measure(directory, mode)
