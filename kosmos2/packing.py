"""Float32 linear-layer weights in oneDNN's blocked layout, for inference on x86 CPUs.

PyTorch's default CPU matrix product (MKL) handles a float32 batch of 4+ rows about twice as slowly
as one row, although both stream the same weights: with the weights reordered once into oneDNN's
blocked layout, 4 rows cost about 1.2x one row (and one row or a long prompt no more than before).
That is what lets batched decoding serve several users for little more than the price of one.

:func:`pack_linears` gives every ``kosmos2.layers.Linear`` of a model such a copy; the ``weight``
parameter stays (state dicts, ``.to()``, training all see the ordinary tensor), and a layer whose
weight has changed since (moved, converted, assigned or edited in place) drops its copy and computes
as before (so does a copy made with ``copy.deepcopy`` or ``torch.save``: pack it again).
``from_pretrained`` packs float32 CPU models by default and then gives back the pages of the
checkpoint's memory map that the packing read (:func:`release_file_pages`, Linux), so the weights are
held once, not twice.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
import sys
import warnings
from collections.abc import Iterable

import torch
from torch import nn

from .layers import Linear

_MADV_DONTNEED = 4  # same value on Linux and macOS


def supported() -> bool:
    """Whether this machine and PyTorch build can pack: an x86-64 CPU and PyTorch with oneDNN."""
    return (platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def pack_linears(module: nn.Module, release_mapped: bool = False) -> list[Linear]:
    """Pack the float32 CPU weight of every ``kosmos2.layers.Linear`` under ``module``; returns those layers.

    ``release_mapped``: give back each weight's file pages right after packing it, so that peak memory
    stays near one copy (see :func:`release_file_pages`: only for weights never written since mapped).
    """
    if not supported():
        raise ValueError("packed float32 weights need an x86-64 CPU and a PyTorch build with oneDNN (mkldnn); "
                         f"this is {platform.machine()} with mkldnn available={torch.backends.mkldnn.is_available()}")
    layers = [m for m in module.modules()
              if isinstance(m, Linear) and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu"]
    mappings = _file_mappings() if release_mapped else []
    for layer in layers:
        layer.pack()
        _release_pages(layer.weight, mappings)
    return layers


def unpack_linears(module: nn.Module) -> int:
    """Drop the packed copies under ``module`` (the layers compute from ``weight`` again); returns how many."""
    layers = [m for m in module.modules() if isinstance(m, Linear) and m.packed_weight() is not None]
    for layer in layers:
        layer.unpack()
    return len(layers)


def release_file_pages(tensors: Iterable[torch.Tensor]) -> int:
    """Drop from this process's memory the pages of each tensor that lies in a file mapping (Linux; elsewhere
    nothing); returns the bytes released. The data stays in the file (and the page cache) and is read back
    on the next access.

    Only for tensors mapped from a file and never written since, such as weights just read from a
    safetensors memory map: a written page of a private mapping would go back to the file's content. On
    anonymous memory the call would zero the data, so tensors outside file mappings are left alone.
    """
    mappings = _file_mappings()
    return sum(_release_pages(tensor, mappings) for tensor in tensors)


def _release_pages(tensor: torch.Tensor, mappings: list[tuple[int, int]]) -> int:
    """madvise(DONTNEED) the whole pages of ``tensor`` if it lies inside one of ``mappings``; the bytes released."""
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    page = mmap.PAGESIZE
    first, last = -(-start // page) * page, end // page * page  # whole pages inside the tensor
    if last <= first or not any(lo <= start and end <= hi for lo, hi in mappings):
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED) != 0:
        warnings.warn(f"could not release the file pages of a weight (errno {ctypes.get_errno()}); "
                      "the model uses more memory", RuntimeWarning, stacklevel=3)
        return 0
    return last - first


def _file_mappings() -> list[tuple[int, int]]:
    """(start, end) of this process's mappings of regular files (Linux; elsewhere none)."""
    if not sys.platform.startswith("linux"):
        return []
    ranges = []
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/") and not fields[5].startswith(("/dev/", "/memfd:")):
                start, end = (int(a, 16) for a in fields[0].split("-"))
                ranges.append((start, end))
    return ranges
