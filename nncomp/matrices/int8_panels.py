"""The int8 weight layout of the u8 x s8 kernels: codes in panels of 16 output channels x 4 inputs
(nncomp/matrices/int8.py keeps its codes so; kernels/int8_vnni.py, int8_amx.py and int8.py read them)."""
import numpy as np

from ..kernels import aligned

__all__ = ["PANEL", "panel_width", "pack_panels", "unpack_panels"]

PANEL = 16    # output channels per weight panel


def panel_width(n_out):
    """Output channels per weight panel: 16 for every layer. The VNNI kernel reads four panels at a
    time (four contiguous streams, 64 channels in 4 registers), the AMX kernel one 1 KiB weight tile
    of each (16 groups of 4 inputs x 16 channels, contiguous). Measured on a 2-core Xeon with AMX,
    fc6 (4096 x 25088) from DRAM: panels of 64 channels (one stream; AMX tiles then rows 256 bytes
    apart) took 3.6-3.9 / 4.2-4.6 / 7.1-7.3 / 7.8 ms at 1 / 2 / 16 / 32 rows, panels of 16 3.3 / 3.5 /
    4.2-4.5 / 4.8 ms. Padding is at most 15 rows."""
    return PANEL


def pack_panels(q, width):
    """Codes ``(n_out, n_in)`` -> panels ``(ceil(n_out / width), ceil(n_in / 4), 4 * width)``, zero-padded:
    ``wp[p, g, 4 * c + j] = q[p * width + c, 4 * g + j]`` (the layout of the u8 x s8 kernels)."""
    n_out, n_in = q.shape
    n_p, n_g = -(-n_out // width), -(-n_in // 4)
    full = np.zeros((n_p * width, n_g * 4), np.int8)
    full[:n_out, :n_in] = q
    return aligned.aligned(full.reshape(n_p, width, n_g, 4).transpose(0, 2, 1, 3).reshape(n_p, n_g, 4 * width))


def unpack_panels(wp, shape):
    """Inverse of :func:`pack_panels`."""
    n_p, n_g, pw4 = wp.shape
    full = wp.reshape(n_p, n_g, pw4 // 4, 4).transpose(0, 2, 1, 3).reshape(n_p * pw4 // 4, n_g * 4)
    return np.ascontiguousarray(full[:shape[0], :shape[1]])
