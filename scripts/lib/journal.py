"""Journal files as the probes in scripts/ write them."""

import os

JOURNAL_BYTES = 64 << 20


def open_journal(path, kind):
    """Opens a journal file to append to or write over from its start.

    kind is "append" (a file appended to), "sparse" (a 64 MiB file sized
    with ftruncate, which leaves a hole, as fjall makes its journals) or
    "zeroed" (the same size, filled with zeros and synced beforehand).
    """
    if kind == "append":
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    if kind == "zeroed":
        chunk = b"\0" * (1 << 20)
        for _ in range(JOURNAL_BYTES >> 20):
            os.write(fd, chunk)
    else:
        os.ftruncate(fd, JOURNAL_BYTES)
    os.fsync(fd)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
