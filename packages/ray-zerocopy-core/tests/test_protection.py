"""Write protection on one allocation laid out as Ray stores a payload (no Ray needed)."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ray_zerocopy_core import protection
from ray_zerocopy_core.representation import PAGE_SIZE

pytestmark = pytest.mark.skipif(not protection.protection_supported(), reason="needs Linux mprotect")


def stored_layout(data_bytes: int) -> list[np.ndarray]:
    """Pad, data, pad: consecutive views of one page-aligned allocation, offset like Ray's."""
    block = np.zeros(3 * PAGE_SIZE + data_bytes + 2 * PAGE_SIZE, dtype=np.uint8)
    base = -int(block.ctypes.data) % PAGE_SIZE + 64  # start 64 bytes into a page, as Ray might
    pad1 = block[base : base + PAGE_SIZE]
    data = block[base + PAGE_SIZE : base + PAGE_SIZE + data_bytes]
    pad2 = block[base + PAGE_SIZE + data_bytes : base + 2 * PAGE_SIZE + data_bytes]
    return [pad1, data, pad2]


def test_every_data_byte_lies_on_a_protected_page() -> None:
    buffers = stored_layout(10_000)
    start, end = protection.inner_page_range(protection.buffer_spans(buffers))
    data = buffers[1]
    assert start % PAGE_SIZE == 0 and end % PAGE_SIZE == 0
    assert start <= data.ctypes.data and data.ctypes.data + data.nbytes <= end
    assert buffers[0].ctypes.data <= start and end <= buffers[2].ctypes.data + PAGE_SIZE


def test_scattered_buffers_are_not_protected() -> None:
    scattered = [np.zeros(PAGE_SIZE, np.uint8), np.ones(100, np.uint8), np.zeros(PAGE_SIZE, np.uint8)]
    assert not protection.laid_out_together(protection.buffer_spans(scattered))
    assert protection.protect(protection.buffer_spans(scattered)) is None
    scattered[1][0] = 5  # still writable


def test_pages_become_writable_again_when_released() -> None:
    buffers = stored_layout(3 * PAGE_SIZE)
    region = protection.protect(protection.buffer_spans(buffers))
    assert region is not None and region.nbytes >= 3 * PAGE_SIZE
    del region
    gc.collect()
    buffers[1][:] = 7  # would fault if the pages were still read-only
    assert int(buffers[1].sum()) == 7 * 3 * PAGE_SIZE


def test_a_write_stops_the_process_and_names_the_fix() -> None:
    script = textwrap.dedent(
        """
        import numpy as np, torch
        from ray_zerocopy_core import protection
        from test_protection import stored_layout
        buffers = stored_layout(8 * 4096)
        region = protection.protect(protection.buffer_spans(buffers))
        weights = torch.from_numpy(buffers[1]).view(torch.float32)
        print("protected", flush=True)
        weights.add_(1.0)
        print("not reached", flush=True)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=__file__.rsplit("/", 1)[0]
    )
    assert result.returncode == -11, result.stderr  # SIGSEGV
    assert "protected" in result.stdout and "not reached" not in result.stdout
    assert "read-only" in result.stderr and "load(writable=True)" in result.stderr
