"""Weights and KV cache in 2 MiB pages (Linux transparent huge pages, asked for by madvise).

A CPU decode step streams every weight, and a batch's decode every cached K/V row, once: with 4 KiB
pages that is a TLB miss every 4 KiB and the hardware prefetcher stops at each page's end. Memory
that the kernel backs with 2 MiB pages streams faster. Linux gives anonymous memory huge pages only
where asked (transparent_hugepage=madvise, the common setting), and only for whole 2 MiB-aligned
runs, so the tensors a step streams are moved into one arena (`move`), and a cache is advised
before it is first written (`zeros`). Elsewhere (not Linux, madvise refused) nothing changes:
the memory is the same, only its pages differ."""
import ctypes
import ctypes.util
import functools
import sys

import torch

PAGE = 2 << 20
MADV_HUGEPAGE = 14


@functools.cache
def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc.madvise


def advise(t: torch.Tensor) -> bool:
    """Ask for huge pages over the whole 2 MiB pages inside t's memory (before it is written)."""
    madvise = _madvise()
    start = -(-t.data_ptr() // PAGE) * PAGE
    end = (t.data_ptr() + t.untyped_storage().nbytes()) // PAGE * PAGE
    return madvise is not None and end > start and madvise(start, end - start, MADV_HUGEPAGE) == 0


def zeros(shape, dtype: torch.dtype) -> torch.Tensor:
    """torch.zeros on the CPU, in huge pages where the kernel grants them."""
    t = torch.empty(shape, dtype=dtype)
    advise(t)
    return t.zero_()


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
    if total < PAGE:
        return
    arena = torch.empty(total + PAGE, dtype=torch.uint8)
    if not advise(arena):
        return
    base = -(-arena.data_ptr() // PAGE) * PAGE - arena.data_ptr()  # the arena's first whole page
    storage = arena.untyped_storage()
    for ptr, ts in storages.items():
        at = base + offsets[ptr]
        arena[at:at + sizes[ptr]].copy_(torch.empty(0, dtype=torch.uint8).set_(ts[0].untyped_storage()))
        for t in ts:
            t.data = torch.empty(0, dtype=t.dtype).set_(storage, at // t.element_size() + t.storage_offset(),
                                                        t.shape, t.stride())
