"""Memory and wall-time bounds for a ``faceveil`` command.

``faceveil --max-memory-gb 4 --max-seconds 600 COMMAND ...`` (or ``FACEVEIL_MAX_MEMORY_GB`` /
``FACEVEIL_MAX_SECONDS``) runs COMMAND under

* a memory bound: the soft ``RLIMIT_DATA`` of the process (heap, anonymous mappings: what torch,
  dlib, numpy and PIL allocate; not the code and model files mapped read-only, so it tracks the
  resident size closely, unlike ``RLIMIT_AS``). An allocation past it fails where it happens
  (``MemoryError`` from Python, numpy and dlib's ``std::bad_alloc``, torch's "can't allocate
  memory" ``RuntimeError``) instead of the kernel's OOM killer ending the process later. The
  default is 80 % of the physical memory; 0 means no bound.
* a wall-time bound: ``SIGALRM`` raises :class:`TimeBoundError` in the main thread. Python checks
  signals between bytecodes, so a native call in progress (a dlib detector pass, bounded to a few
  seconds by data/align.py's pixel budgets; one torch op) finishes first. If the error is caught
  and ignored, or the command is still running ``GRACE`` later, the process prints the error and
  exits anyway; a last-resort :mod:`faulthandler` watchdog (which needs no GIL) ends a process
  stuck in native code one minute after that, with a traceback.

Either way the command ends with one line, e.g. ``error: out of the 4 GB memory bound while
running `faceveil protect` (in faceveil.data.align.detect); raise it with --max-memory-gb or
FACEVEIL_MAX_MEMORY_GB``, and exit code :data:`EXIT_MEMORY` (3) or :data:`EXIT_TIME` (4), never
a traceback. The bounds are inherited by worker processes the command starts (the time bound is
not: interval timers do not survive ``fork``).
"""

from __future__ import annotations

import faulthandler
import os
import resource
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Annotated

import typer
from typer.core import TyperGroup

from faceveil.errors import FaceveilError

ENV_MEMORY = "FACEVEIL_MAX_MEMORY_GB"
ENV_SECONDS = "FACEVEIL_MAX_SECONDS"
EXIT_MEMORY = 3
EXIT_TIME = 4
#: Default memory bound, as a fraction of the physical memory.
DEFAULT_MEMORY_FRACTION = 0.8
#: Seconds between the time bound's error and the forced exit if the command does not end.
GRACE = 5.0
#: Seconds after the forced exit was due until the faulthandler watchdog ends a process stuck in native code.
NATIVE_GRACE = 60.0
_MEMORY_MESSAGES = ("can't allocate memory", "cannot allocate memory", "not enough memory", "std::bad_alloc", "out of memory")


class MemoryBoundError(FaceveilError, MemoryError):
    """The command ran out of its memory bound."""


class TimeBoundError(FaceveilError):
    """The command ran past its wall-time bound."""


def physical_memory_gb() -> float:
    """Physical memory of this machine in GB (2**30 bytes)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def _fmt(x: float) -> str:
    return f"{x:g}" if x < 100 else f"{x:.0f}"


@dataclass
class Bounds:
    """The bounds of one command run; ``what`` names it in messages (e.g. "faceveil protect")."""

    memory_gb: float | None = None
    seconds: float | None = None
    what: str = "faceveil"
    timed_out: bool = False
    _old_rlimit: tuple[int, int] | None = None
    _old_handler: object = None
    _armed: bool = False

    def memory_message(self, where: str = "") -> str:
        gb = "?" if self.memory_gb is None else _fmt(self.memory_gb)
        return (f"out of the {gb} GB memory bound while running `{self.what}`{where}; "
                f"raise it with --max-memory-gb or {ENV_MEMORY}")

    def time_message(self, where: str = "") -> str:
        return (f"out of the {_fmt(self.seconds or 0)} s time bound while running `{self.what}`{where}; "
                f"raise it with --max-seconds or {ENV_SECONDS}")

    def apply(self) -> None:
        """Set the soft ``RLIMIT_DATA`` and arm the timer (main thread only); :meth:`restore` undoes both."""
        if self.memory_gb:
            old = resource.getrlimit(resource.RLIMIT_DATA)
            want, hard = int(self.memory_gb * 2**30), old[1]
            if hard != resource.RLIM_INFINITY:
                want = min(want, hard)
            resource.setrlimit(resource.RLIMIT_DATA, (want, hard))
            if self._old_rlimit is None:
                self._old_rlimit = old
        if self.seconds and threading.current_thread() is threading.main_thread():
            self._old_handler = signal.signal(signal.SIGALRM, self._on_alarm)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
            with suppress(AttributeError, OSError, ValueError):  # needs a real file descriptor (not under CliRunner)
                faulthandler.dump_traceback_later(self.seconds + GRACE + NATIVE_GRACE, exit=True, file=sys.__stderr__)
            self._armed = True

    def restore(self) -> None:
        """Disarm the timer and put back the previous memory limit."""
        if self._armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            faulthandler.cancel_dump_traceback_later()
            signal.signal(signal.SIGALRM, self._old_handler)  # type: ignore[arg-type]
            self._armed = False
        if self._old_rlimit is not None:
            resource.setrlimit(resource.RLIMIT_DATA, self._old_rlimit)
            self._old_rlimit = None

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if not self.timed_out:
            self.timed_out = True
            signal.setitimer(signal.ITIMER_REAL, GRACE)  # the forced exit, if this error gets swallowed
            raise TimeBoundError(self.time_message(_where(frame=frame)))
        sys.stdout.flush()
        print(f"error: {self.time_message()} (still running {GRACE:g} s after the error: stopped)", file=sys.stderr, flush=True)
        os._exit(EXIT_TIME)

    def outcome(self, e: BaseException) -> tuple[str, int] | None:
        """(error line, exit code) if ``e`` means a bound ran out, else None. The alarm's
        :class:`TimeBoundError` may reach here wrapped: raised while a C extension initialises it becomes
        ``ImportError: initialization failed`` with the time error as its cause (seen on a loaded machine,
        the alarm landing inside ``import dlib``)."""
        if isinstance(e, TimeBoundError):
            return str(e), EXIT_TIME
        if isinstance(e, typer.Exit | SystemExit):
            code = e.exit_code if isinstance(e, typer.Exit) else e.code
            if not (self.timed_out and code):
                return None
            # a command caught the TimeBoundError (a FaceveilError) and failed: the CLI's commands print
            # such errors and exit 2 (cli._fail), so only other exits still need the line
            return ("" if code == 2 else self.time_message()), EXIT_TIME
        if (t := _in_chain(e, TimeBoundError)) is not None:  # wrapped (an exit's context is checked above)
            return str(t), EXIT_TIME
        if self.memory_gb and is_memory_error(e):
            return self.memory_message(_where(e.__traceback__)), EXIT_MEMORY
        return None


def _chain(e: BaseException) -> Iterator[BaseException]:
    """``e``, then its causes / contexts (each once)."""
    seen: set[int] = set()
    x: BaseException | None = e
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        yield x
        x = x.__cause__ or x.__context__


def _in_chain(e: BaseException, kind: type[BaseException]) -> BaseException | None:
    """``e`` or the first exception of type ``kind`` among its causes / contexts."""
    return next((x for x in _chain(e) if isinstance(x, kind)), None)


def _where(tb: TracebackType | None = None, frame: FrameType | None = None) -> str:
    """' (in faceveil.module.function)' for the innermost faceveil frame of a traceback or stack."""
    frames: list[FrameType] = []
    f = frame
    while f is not None:
        frames.insert(0, f)
        f = f.f_back
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for fr in reversed(frames):
        mod = fr.f_globals.get("__name__", "")
        if mod.startswith("faceveil.") and mod != __name__:
            return f" (in {mod}.{fr.f_code.co_name})"
    return ""


def is_memory_error(e: BaseException) -> bool:
    """True for an allocation failure: ``MemoryError`` or torch's/dlib's native equivalents,
    also when wrapped (``raise ... from``) in another exception."""
    return any(isinstance(x, MemoryError) or isinstance(x, RuntimeError | OSError)
               and any(m in str(x).lower() for m in _MEMORY_MESSAGES) for x in _chain(e))


def resolve(memory_gb: float | None, seconds: float | None) -> tuple[float | None, float | None]:
    """The bounds in force: the given values, else the environment variables, else the default
    memory bound (:data:`DEFAULT_MEMORY_FRACTION` of physical memory) and no time bound; 0 is none."""
    if memory_gb is None:
        env = os.environ.get(ENV_MEMORY, "").strip()
        memory_gb = float(env) if env else round(DEFAULT_MEMORY_FRACTION * physical_memory_gb(), 1)
    if seconds is None:
        env = os.environ.get(ENV_SECONDS, "").strip()
        seconds = float(env) if env else None
    return (memory_gb if memory_gb and memory_gb > 0 else None), (seconds if seconds and seconds > 0 else None)


def _report(message: str) -> None:
    sys.stdout.flush()
    if message:
        print(f"error: {message}", file=sys.stderr, flush=True)


@contextmanager
def bounded(memory_gb: float | None, seconds: float | None, what: str = "faceveil") -> Iterator[Bounds]:
    """Run the block under the bounds (``None``: that bound is not set; see :func:`resolve` for
    the defaults); on running out print one ``error:`` line and raise ``SystemExit`` with
    :data:`EXIT_MEMORY` or :data:`EXIT_TIME`. The previous limits are restored afterwards."""
    b = Bounds(memory_gb, seconds, what)
    b.apply()
    try:
        yield b
    except BaseException as e:
        out = b.outcome(e)
        if out is None:
            raise
        _report(out[0])
        raise SystemExit(out[1]) from None
    finally:
        b.restore()


_META = "faceveil.bounds"


class BoundedGroup(TyperGroup):
    """The top-level typer group: runs the chosen command under the bounds that
    :func:`bounds_options` (the group callback, which runs first) sets from the global options."""

    def invoke(self, ctx: typer.Context) -> object:
        b = ctx.meta[_META] = Bounds()
        try:
            return super().invoke(ctx)
        except BaseException as e:
            out = b.outcome(e)
            if out is None:
                raise
            _report(out[0])
            raise typer.Exit(out[1]) from None
        finally:
            b.restore()


def bounds_options(
    ctx: typer.Context,
    max_memory_gb: Annotated[float | None, typer.Option(
        "--max-memory-gb", envvar=ENV_MEMORY, show_envvar=True,
        help="Memory bound in GB (0: none; default 80 % of physical memory). Running out ends the command with a clear error.")] = None,
    max_seconds: Annotated[float | None, typer.Option(
        "--max-seconds", envvar=ENV_SECONDS, show_envvar=True,
        help="Wall-time bound of the whole command in seconds (default: none; not `attack --max-seconds`, its training budget). "
             "Running past it ends the command with a clear error.")] = None,
) -> None:
    """Apply the global bounds options to the command that follows (the app's callback)."""
    b = ctx.meta.get(_META)
    if b is None:  # not run under BoundedGroup
        return
    b.memory_gb, b.seconds = resolve(max_memory_gb, max_seconds)
    b.what = f"faceveil {ctx.invoked_subcommand or ''}".strip()
    b.apply()
