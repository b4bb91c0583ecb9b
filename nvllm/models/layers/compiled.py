import functools

import torch


@functools.cache
def compiled(fn):
    """One torch.compile'd version of a pure function, shared by every layer that calls it."""
    return torch.compile(fn, dynamic=True)
