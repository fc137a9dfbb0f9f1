"""Bounding and giving back the memory that decoded images take.

A 4096 x 2048 JPEG of 5 MB decodes to 25 MB, and the graph's tensors at that size take many
times more; eight of them at once took the server from 135 MB to 4.1 GB. So each worker holds a
budget of decoded pixels (`PixelBudget`): a request reserves its image's pixels from the header,
before decoding, and gives them back once its answer is sent; a request that does not fit is
refused with 503 and Retry-After instead of waiting in memory.

After large requests the memory must also leave the process. Two things kept it (measured with
the tests' colour model, 8 x 4096 x 2048 px: 4.4 GB resident after the burst, 180 MB before):
- onnxruntime's CPU arena keeps every block it ever grew (about 3.6 GB here), and its per-run
  shrinkage cannot free a block that still holds the outputs just returned: the server's
  session runs without the arena (`OnnxSegmenter(memory_arena=False)`);
- glibc keeps freed heap pages in its arenas (one per thread that allocated; the rest): when the
  last large request of a burst has left, `trim_heap` (malloc_trim) returns them to the system.
With both, the process is back within a few tens of MB of where it started.
"""

import ctypes
import ctypes.util
import functools

# A burst of requests of at least this many pixels gives its freed heap back once it is over;
# below it, glibc's free lists are worth keeping for the next requests.
LARGE_PIXELS = 2**21


class PixelBudget:
    """Decoded pixels in flight in one worker, at most `limit` at a time.

    Used from the event loop only (reserve and release never run concurrently).

    Example:
    >>> budget = PixelBudget(100)
    >>> budget.reserve(60), budget.reserve(60), budget.in_use
    (True, False, 60)
    >>> budget.release(60); budget.in_use
    0
    """

    def __init__(self, limit):
        if int(limit) < 1:
            raise ValueError(f"the pixel budget {limit} must be at least 1.")
        self.limit = int(limit)
        self.in_use = 0
        self.released_since_trim = 0

    def reserve(self, pixels):
        """Take `pixels` from the budget; False (and nothing taken) when they do not fit."""
        pixels = int(pixels)
        if self.in_use + pixels > self.limit:
            return False
        self.in_use += pixels
        return True

    def release(self, pixels):
        self.in_use -= int(pixels)
        self.released_since_trim += int(pixels)

    def should_trim(self):
        """True once per burst: nothing is in flight and at least LARGE_PIXELS left since the
        last trim (trimming while requests run would only hand back pages they take again)."""
        if self.in_use == 0 and self.released_since_trim >= LARGE_PIXELS:
            self.released_since_trim = 0
            return True
        return False


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's malloc_trim, or None where the C library is not glibc (macOS, musl)."""
    name = ctypes.util.find_library("c")
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes, function.restype = [ctypes.c_size_t], ctypes.c_int
    return function


def trim_heap():
    """Return the C heap's free pages to the system (every glibc arena); False where that is
    not available."""
    function = _malloc_trim()
    if function is None:
        return False
    function(0)
    return True
