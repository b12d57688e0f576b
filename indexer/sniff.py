"""What a file is, from its first bytes: audio container, image, or neither.

Never from the extension. Kept apart from ``media`` and ``audio`` because both need it
(``read_file`` picks the byte limit by it, ``decode_audio`` refuses what is not audio) and
neither should pull in the other's decoders for it.
"""

from __future__ import annotations

import io
from typing import Literal

from PIL import Image, UnidentifiedImageError

# Enough to see past a typical ID3 tag without cover art, to read an Ogg stream's first
# packet, and to hold two MPEG frames (the longest is 1729 bytes).
SNIFF_BYTES = 4096

# kbit/s by (version is MPEG-1, layer); index 0 is "free format", 15 is reserved.
_BITRATES = {
    (True, 3): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 1): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 3): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 1): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
# Hz by version bits (3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5; 1 is reserved).
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}

_OGG_CODECS = (
    (b"\x01vorbis", "OGG/VORBIS"),
    (b"OpusHead", "OGG/OPUS"),
    (b"\x7fFLAC", "OGG/FLAC"),
    (b"Speex   ", "OGG/SPEEX"),
)


def sniff_audio(head: bytes) -> str | None:
    """The audio container (and, for Ogg, codec) the first bytes announce, or None.

    Names: WAV, RF64, AIFF, AIFC, FLAC, OGG/VORBIS, OGG/OPUS, OGG/FLAC, OGG/SPEEX, OGG
    (some other first stream), MP3 (an ID3 tag, or MPEG audio of any layer: libsndfile
    calls them all MP3). Give it at least the first ``SNIFF_BYTES`` where there are so many.
    """
    if len(head) >= 12 and head[8:12] == b"WAVE":
        if head[:4] in (b"RIFF", b"RIFX"):
            return "WAV"
        if head[:4] == b"RF64":
            return "RF64"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return head[8:12].decode("ascii")
    if head.startswith(b"fLaC"):
        return "FLAC"
    if head.startswith(b"OggS"):
        return _ogg_codec(head)
    if head.startswith(b"ID3"):
        return _after_id3(head)
    if _mpeg_frame_length(head, 0) is not None and _second_frame_agrees(head, 0):
        return "MP3"
    return None


def kind_of(data: bytes) -> Literal["audio", "image"] | None:
    """'audio' or 'image' by content, or None for anything else. Audio is asked first: its
    signatures are exact, while a few of Pillow's openers accept loose ones."""
    if sniff_audio(data[:SNIFF_BYTES]) is not None:
        return "audio"
    try:
        # Like media.open_image: Image.open reads the header only, never the pixels.
        with Image.open(io.BytesIO(data)):
            return "image"
    except UnidentifiedImageError:
        return None
    except Exception:
        # An opener recognised its signature and then choked on the header: a damaged
        # image, which the image decoder reports better than "not recognised" would.
        return "image"


def _ogg_codec(head: bytes) -> str:
    # A page header is 27 bytes and a segment table; the first packet follows it.
    if len(head) < 27:
        return "OGG"
    packet = 27 + head[26]
    for magic, name in _OGG_CODECS:
        if head[packet : packet + len(magic)] == magic:
            return name
    return "OGG"


def _after_id3(head: bytes) -> str | None:
    # ID3v2: "ID3", version 2-4, revision, flags, then a 28-bit size in 4 bytes of 7 bits.
    if len(head) < 10 or head[3] not in (2, 3, 4) or head[4] == 0xFF:
        return None
    if any(b & 0x80 for b in head[6:10]):
        return None
    size = head[6] << 21 | head[7] << 14 | head[8] << 7 | head[9]
    end = 10 + size + (10 if head[5] & 0x10 else 0)  # flag 0x10: a footer follows
    if head[end : end + 4] == b"fLaC":
        return "FLAC"  # some taggers put ID3 in front of FLAC; libsndfile skips it
    # What follows the tag is usually beyond the head (cover art); the tag alone is a
    # strong enough sign: a wrong guess ends in the decoder's "format not recognised".
    return "MP3"


def _mpeg_frame_length(head: bytes, at: int) -> int | None:
    """Length in bytes of the MPEG audio frame whose header starts at ``at``, or None when
    those 4 bytes are not a frame header with every field valid. Free-format (bitrate
    index 0) streams are refused: they are rare, and accepting them would let far more
    random data through."""
    if len(head) < at + 4 or head[at] != 0xFF or head[at + 1] & 0xE0 != 0xE0:
        return None
    b1, b2, b3 = head[at + 1], head[at + 2], head[at + 3]
    version, layer = b1 >> 3 & 3, b1 >> 1 & 3
    bitrate_index, rate_index, padding = b2 >> 4, b2 >> 2 & 3, b2 >> 1 & 1
    if version == 1 or layer == 0 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    if b3 & 3 == 2:  # emphasis 2 is reserved
        return None
    mpeg1 = version == 3
    bitrate = _BITRATES[(mpeg1, layer)][bitrate_index] * 1000
    rate = _RATES[version][rate_index]
    if layer == 3:  # layer I: 4-byte slots
        return (12 * bitrate // rate + padding) * 4
    if layer == 1 and not mpeg1:  # layer III, MPEG-2/2.5: half as many samples a frame
        return 72 * bitrate // rate + padding
    return 144 * bitrate // rate + padding


def _second_frame_agrees(head: bytes, at: int) -> bool:
    """A second frame header of the same version, layer and sample rate right where the
    first frame ends: one valid header passes random bytes about once in 10,000, two in a
    row about once in 10^8. A file too short to hold the second is taken on the first."""
    length = _mpeg_frame_length(head, at)
    if length is None:
        return False
    nxt = at + length
    if len(head) < nxt + 4:
        return True
    if _mpeg_frame_length(head, nxt) is None:
        return False
    same_stream = 0xFE  # version and layer bits (protection bit may differ)
    return (
        head[nxt + 1] & same_stream == head[at + 1] & same_stream
        and head[nxt + 2] & 0x0C == head[at + 2] & 0x0C
    )
