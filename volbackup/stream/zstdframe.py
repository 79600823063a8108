"""A streaming walker over the structure of one zstd frame (RFC 8878, section 3.1.1).

python-zstandard's bounded-output readers do not say whether the frame ended or the
input was merely cut short, and its unbounded decompressobj() can expand a small
input into gigabytes. So restore decompresses with a bounded reader, and this walker
watches the compressed bytes go by: it reads only the frame and block headers, and
`finish()` insists on a complete frame (last block plus content checksum) followed by
nothing.
"""

from __future__ import annotations

from volbackup.errors import IntegrityError

MAGIC = b"\x28\xb5\x2f\xfd"
_DICT_ID_BYTES = (0, 1, 2, 4)
_FCS_BYTES = (0, 2, 4, 8)


class FrameWalker:
    def __init__(self) -> None:
        self._buf = bytearray()
        self._need = 4             # header bytes wanted next
        self._state = "magic"
        self._skip = 0             # block content bytes to pass over
        self._checksum = False
        self._last_block = False
        self.ended = False

    def feed(self, data: bytes | memoryview) -> None:
        if self.feed_some(data) < len(data):
            raise IntegrityError("archive has data after the end of its zstd frame")

    def feed_some(self, data: bytes | memoryview) -> int:
        """Feed `data` up to the end of the frame; how many bytes of it were the frame's
        (for inputs of several frames one after another)."""
        view = memoryview(data)
        pos, n = 0, len(view)
        while pos < n:
            if self.ended:
                return pos
            if self._skip:
                take = min(self._skip, n - pos)
                self._skip -= take
                pos += take
                if not self._skip:
                    self._after_block()
                continue
            take = min(self._need - len(self._buf), n - pos)
            self._buf += view[pos:pos + take]
            pos += take
            if len(self._buf) == self._need:
                field = bytes(self._buf)
                self._buf.clear()
                self._on_field(field)
        return n

    def _on_field(self, field: bytes) -> None:
        state = self._state
        if state == "magic":
            if field != MAGIC:
                raise IntegrityError("archive is not a zstd frame (bad magic number)")
            self._state, self._need = "descriptor", 1
        elif state == "descriptor":
            fhd = field[0]
            if fhd & 0x08:
                raise IntegrityError("archive has a corrupt zstd frame header")
            single_segment = bool(fhd & 0x20)
            self._checksum = bool(fhd & 0x04)
            fcs_flag = fhd >> 6
            fcs = _FCS_BYTES[fcs_flag] or (1 if single_segment and fcs_flag == 0 else 0)
            rest = (0 if single_segment else 1) + _DICT_ID_BYTES[fhd & 0x03] + fcs
            self._state, self._need = "header-rest", rest
            if not rest:
                self._start_block()
        elif state == "header-rest":
            self._start_block()
        elif state == "block":
            header = int.from_bytes(field, "little")
            self._last_block = bool(header & 1)
            block_type, size = (header >> 1) & 3, header >> 3
            if block_type == 3:
                raise IntegrityError("archive has a corrupt zstd block header")
            self._skip = 1 if block_type == 1 else size
            if not self._skip:
                self._after_block()
        elif state == "checksum":
            self.ended = True

    def _start_block(self) -> None:
        self._state, self._need = "block", 3

    def _after_block(self) -> None:
        if not self._last_block:
            self._start_block()
        elif self._checksum:
            self._state, self._need = "checksum", 4
        else:
            self.ended = True

    def finish(self) -> None:
        if not self.ended:
            raise IntegrityError("archive is truncated: the zstd frame does not end")
