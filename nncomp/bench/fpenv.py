"""The calling thread's floating-point environment, kept across a peer's calls.

ONNX Runtime's ``session.set_denormal_as_zero`` (the fair ORT peer: nncomp flushes subnormal weights
at load, nncomp/io/untrusted.py) sets the x86 flush-to-zero and denormals-are-zero bits of MXCSR on
the thread that runs the session: the caller's. Left set, every later NumPy and nncomp computation of
the process flushes subnormal values too (nncomp's own timings would inherit ORT's switch, and
hypothesis refuses to run: it checks that subnormals are representable). :class:`KeptFloatEnv`
wraps a session: each ``run`` in the environment ORT set, the caller's restored after it and after
the session's creation (glibc's ``fegetenv`` / ``fesetenv``, which cover MXCSR on x86-64; a no-op
where there is no libc). Restoring alone would time ORT's calling thread without its switch: the
PP-OCRv6 detector took 129 ms a pass against 56.
"""
import contextlib
import ctypes

_ENV_BYTES = 64         # glibc's fenv_t is 32 bytes on x86-64 (28 of x87 state, MXCSR); room to spare


def _libc():
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "fegetenv") and hasattr(libc, "fesetenv") else None
    except OSError:
        return None


_LIBC = _libc()


def _get():
    env = ctypes.create_string_buffer(_ENV_BYTES)
    if _LIBC is not None:
        _LIBC.fegetenv(env)
    return env


@contextlib.contextmanager
def kept_float_env(inside=None):
    """Restore the calling thread's floating-point environment when the block ends (``inside``: an
    environment from :func:`_get` to run the block in)."""
    if _LIBC is None:
        yield
        return
    env = _get()
    if inside is not None:
        _LIBC.fesetenv(inside)
    try:
        yield
    finally:
        _LIBC.fesetenv(env)


class KeptFloatEnv:
    """``session`` (an ONNX Runtime InferenceSession) run in the floating-point environment its
    creation set (ORT's: subnormals as zero on the calling thread, which computes a share of each
    run), the caller's restored after its creation and after each ``run``; every other attribute is
    the session's."""

    def __init__(self, make):
        with kept_float_env():
            self._session = make()
            self._env = _get()

    def run(self, *args, **kwargs):
        with kept_float_env(self._env):
            return self._session.run(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._session, name)
