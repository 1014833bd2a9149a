"""Canonical Huffman bit streams: encode symbol indices, decode them with a lookup table.

Bits are written most significant first, byte after byte; a code of length ``L`` is the ``L`` low
bits of ``code``. Decoding peeks ``maxlen`` (<= 24) bits at a time: codes of at most ``lut_bits``
bits resolve in one table lookup, longer ones by the canonical rule (a code of length ``l`` is the
one whose first ``l`` bits ``c`` satisfy ``c - first[l] < count[l]``). The stream handed to the
decoder is zero-padded by 4 bytes so that a peek never reads past the end; a code that would end
after ``nbits`` stops the decoder, which returns how many symbols it produced (the caller reports
"bitstream ended after N of M symbols").
"""
import numpy as np

from ._jit import jit


def _encode(sym, code, length, out):
    """Write the codes of ``sym`` into ``out``; returns the number of bits written.

    IN  sym (n,) int32 symbol indices < len(code); code (nsym,) uint32; length (nsym,) uint8, each
        in 0..24 (0: the single-symbol alphabet, nothing written).
    OUT out (ceil(total_bits / 8),) uint8, zeroed by the caller; the last byte padded with 0 bits.
    """
    buf = np.uint64(0)
    nbuf = 0
    pos = 0
    bits = 0
    for i in range(sym.shape[0]):
        s = sym[i]
        ln = np.int64(length[s])
        buf = (buf << np.uint64(ln)) | np.uint64(code[s])
        nbuf += ln
        bits += ln
        while nbuf >= 8:
            nbuf -= 8
            out[pos] = np.uint8((buf >> np.uint64(nbuf)) & np.uint64(255))
            pos += 1
        buf &= (np.uint64(1) << np.uint64(nbuf)) - np.uint64(1)
    if nbuf > 0:
        out[pos] = np.uint8((buf << np.uint64(8 - nbuf)) & np.uint64(255))
    return bits


huffman_encode = jit(_encode)


def _decode(stream, nbits, lut_sym, lut_len, lut_bits, first, count, offset, order, maxlen, out):
    """Decode ``len(out)`` symbol indices; returns ``(symbols decoded, bits consumed)``.

    IN  stream (>= ceil(nbits/8) + 4,) uint8, zero-padded; nbits int; lut_sym (2**lut_bits,) int32,
        lut_len (2**lut_bits,) uint8 (0: the code is longer than lut_bits); first, count, offset
        (maxlen + 1,) int64 canonical tables (codes of length l are first[l] .. first[l]+count[l]-1,
        their symbols order[offset[l] ...]); order (nsym,) int32; 1 <= lut_bits <= maxlen <= 24. The
        code must be complete (Kraft sum 1), so every bit pattern starts a code.
    OUT out (n,) int32 symbol indices.
    """
    pos = 0
    for i in range(out.shape[0]):
        p = pos >> 3
        v = (np.int64(stream[p]) << 24) | (np.int64(stream[p + 1]) << 16) | \
            (np.int64(stream[p + 2]) << 8) | np.int64(stream[p + 3])
        v = ((v << (pos & 7)) & 0xFFFFFFFF) >> (32 - maxlen)
        top = v >> (maxlen - lut_bits)
        ln = np.int64(lut_len[top])
        if ln > 0:
            s = lut_sym[top]
        else:
            s = -1
            for l in range(lut_bits + 1, maxlen + 1):
                c = v >> (maxlen - l)
                if c - first[l] < count[l]:
                    s = order[offset[l] + c - first[l]]
                    ln = l
                    break
            if s < 0:
                return i, pos
        if pos + ln > nbits:
            return i, pos
        out[i] = s
        pos += ln
    return out.shape[0], pos


huffman_decode = jit(_decode)
