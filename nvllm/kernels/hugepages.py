"""The weights a CPU step streams in 2 MiB pages (Linux transparent huge pages, asked for by madvise).

A CPU decode step streams every weight once: with 4 KiB pages that is a TLB miss every 4 KiB and
the hardware prefetcher stops at each page's end. Memory that the kernel backs with 2 MiB pages
streams faster. Linux gives anonymous memory huge pages only where asked
(transparent_hugepage=madvise, the common setting), for whole 2 MiB-aligned runs, and when the
memory is first touched, so `move` puts the tensors a step streams into one fresh mapping advised
before any write. Elsewhere (not Linux, no madvise) nothing changes: the memory is the same, only
its pages differ. The KV cache stays in 4 KiB pages: faulting in a cache of gigabytes as huge
pages can cost seconds of compaction at start-up (2 s for 1 GiB measured here), and a batch's
decode, which streams the cache, was no faster for it within this machine's noise."""
import mmap

import torch

PAGE = 2 << 20
_ADVICE = getattr(mmap, "MADV_HUGEPAGE", None)  # Linux only


def _fresh(nbytes: int) -> torch.Tensor | None:
    """nbytes of untouched, zeroed memory starting on a 2 MiB boundary, advised to huge pages (a
    uint8 tensor that keeps its mapping alive), or None where huge pages cannot be asked for."""
    if _ADVICE is None:
        return None
    mapping = mmap.mmap(-1, nbytes + PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        mapping.madvise(_ADVICE)
    except OSError:  # a kernel without transparent huge pages
        mapping.close()
        return None
    whole = torch.frombuffer(mapping, dtype=torch.uint8)  # (holds the mapping)
    start = -whole.data_ptr() % PAGE
    return whole[start:start + nbytes]


def move(tensors) -> None:
    """Move the CPU tensors' storages into one arena in huge pages, in place: each tensor keeps its
    identity, dtype, shape and values (its `.data` is swapped), and tensors that shared a storage
    still share it."""
    storages, seen = {}, set()
    for t in tensors:
        if t is not None and id(t) not in seen and t.device.type == "cpu" and t.untyped_storage().nbytes():
            seen.add(id(t))
            storages.setdefault(t.untyped_storage().data_ptr(), []).append(t)
    sizes = {ptr: ts[0].untyped_storage().nbytes() for ptr, ts in storages.items()}
    offsets, total = {}, 0
    for ptr, size in sizes.items():
        offsets[ptr] = total
        total += -(-size // 64) * 64
    arena = _fresh(total) if total >= PAGE else None
    if arena is None:
        return
    storage, base = arena.untyped_storage(), arena.storage_offset()  # (the mapping's whole buffer)
    for ptr, ts in storages.items():
        at = base + offsets[ptr]
        storage_bytes = torch.empty(0, dtype=torch.uint8).set_(ts[0].untyped_storage())
        arena[offsets[ptr]:offsets[ptr] + sizes[ptr]].copy_(storage_bytes)
        for t in ts:
            t.data = torch.empty(0, dtype=t.dtype).set_(storage, at // t.element_size() + t.storage_offset(),
                                                        t.shape, t.stride())
