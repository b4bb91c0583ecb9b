"""nvllm/kernels/hugepages.py: the tensors a CPU step streams moved into one huge-page arena keep
their identity, values, views and sharing; the pages themselves are the kernel's to grant."""
import re
import sys
from pathlib import Path

import pytest
import torch

from nvllm.kernels import hugepages


def test_move_keeps_identity_values_views_and_sharing():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(1024, 1024), requires_grad=False)  # 4 MiB: whole 2 MiB pages
    tied = weight  # a tied LM head: the same tensor
    base = torch.arange(1000, dtype=torch.int16)
    view = base[10:110].view(10, 10)  # a view with a storage offset, sharing base's storage
    half = torch.randn(33, dtype=torch.bfloat16)
    before = [t.clone() for t in (weight, base, view, half)]
    hugepages.move([weight, tied, base, view, half, None])
    for t, want in zip((weight, base, view, half), before):
        assert torch.equal(t, want) and t.dtype == want.dtype and t.shape == want.shape
    assert isinstance(weight, torch.nn.Parameter) and tied is weight
    assert view.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()  # still one storage
    assert view.data_ptr() == base.data_ptr() + 10 * 2
    view[0, 0] = -1
    assert base[10] == -1
    # one arena: every storage now lies in the same allocation, 64-byte aligned
    assert len({t.untyped_storage().data_ptr() for t in (weight, base, half)}) == 1
    assert all(t.data_ptr() % 64 == 0 for t in (weight, base, half))


def test_a_small_set_is_left_where_it_is():
    """Less than a huge page in all: nothing to gain, nothing moved."""
    t = torch.randn(100)
    ptr = t.data_ptr()
    hugepages.move([t])
    assert t.data_ptr() == ptr


def _thp_mode() -> str | None:
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not sys.platform.startswith("linux") or not path.exists():
        return None
    return re.search(r"\[(\w+)\]", path.read_text()).group(1)


@pytest.mark.skipif(_thp_mode() not in ("always", "madvise"), reason="the kernel grants no transparent huge pages here")
def test_the_arena_is_backed_by_huge_pages():
    """Where Linux grants transparent huge pages, the moved tensors' memory gets them."""
    t = torch.randn(4 << 20)  # 16 MiB
    hugepages.move([t])
    start, end = t.data_ptr(), t.data_ptr() + t.nbytes
    huge_kb = 0
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        m = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
        if m:
            lo, hi = int(m.group(1), 16), int(m.group(2), 16)
            inside = lo < end and start < hi
        elif inside and line.startswith("AnonHugePages:"):
            huge_kb += int(line.split()[1])
    assert huge_kb >= 2048, "no 2 MiB page backs the arena (is memory too fragmented for the kernel to grant one?)"
