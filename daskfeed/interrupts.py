"""Ctrl-C for threads that wait on the user's behalf while the main thread is held in a TensorFlow op.

A guest in the user's process: what daskfeed installs here (a SIGINT handler, Python's wakeup fd) is installed
only while a loader is open, only where nothing else was installed (Python's own Ctrl-C handler, no wakeup fd),
and put back when the last loader closes or is collected. Nothing here looks at another thread's frames,
sends a signal to a thread, or changes the profiler or tracer the user runs.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import inspect
import os
import signal
import socket
import sys
import threading
import weakref
from collections.abc import Iterator
from typing import Any, ClassVar

from daskfeed._compat import TF_ERROR_FILES
from daskfeed.errors import DaskfeedError

__all__ = ["Interrupts"]

#: How long Python's exit waits for threads to leave their waits for batches.
EXIT_WAIT_S = 5.0

#: Calls that make an exception object, during which a KeyboardInterrupt must not be raised.
_MAKING_AN_ERROR = ("__init__", "__new__", "__str__", "__repr__", "__instancecheck__", "__subclasscheck__")
#: How many frames out from the one running the error's making is looked at (its constructor's helpers).
_ERROR_DEPTH = 4
#: Calls that clean up, which an exception raised in them would cut short (a ``with`` block's exit left
#: undone leaves TensorFlow's gradient tape stopped: the next ``fit`` then finds no gradients).
_CLEANING_UP = ("__exit__", "__aexit__", "__enter__", "__del__", "close")
#: Generators and coroutines, resumed by contextlib and await: raising on resume is raising in their cleanup.
_RESUMED = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def _safe_to_raise(frame: Any) -> bool:
    """Whether a KeyboardInterrupt raised in ``frame`` (the main thread's, handed to its own signal handler)
    reaches the code that runs ``fit`` whole: not while TensorFlow's C++ is making its error (it calls the
    error's constructor, and an exception raised there ends as pybind11's ``error_already_set: MISMATCH``), not
    in a cleanup it would cut short, not in a generator resumed by one."""
    if frame is None:  # called from C, not between two Python instructions
        return False
    code = frame.f_code
    if code.co_name in _CLEANING_UP or code.co_filename.endswith("contextlib.py"):
        return False
    caller = frame.f_back
    if code.co_flags & _RESUMED and (
        caller is None or caller.f_code.co_name in _CLEANING_UP or caller.f_code.co_filename.endswith("contextlib.py")
    ):
        return False  # a generator resumed to clean up (a @contextmanager's exit)
    for _ in range(_ERROR_DEPTH):
        if frame is None:
            break
        code = frame.f_code
        if code.co_name in _MAKING_AN_ERROR or code.co_filename.endswith(TF_ERROR_FILES):
            return False
        frame = frame.f_back
    return True


class Interrupts:
    """Tells threads that wait for batches that the user pressed Ctrl-C.

    ``model.fit`` holds the main thread inside a TensorFlow op that waits for the next batch, which a
    daskfeed thread (tf.data's) is computing; Python runs the SIGINT handler only when the main thread runs
    Python again, so Ctrl-C would wait for the read. Python also writes every signal's number to the
    *wakeup fd* the moment it arrives, from C: when no one else uses that fd (asyncio does, in the main thread
    of an event loop), daskfeed points it at a socket of its own while a loader is open, and the waiting
    threads read it. A wait that began before the latest Ctrl-C then fails with ``KeyboardInterrupt("Ctrl-C
    while a batch was being read")``, and TensorFlow returns.

    When Ctrl-C has Python's own handler, daskfeed's takes its place while a loader is open: Python's
    ``KeyboardInterrupt``, except in one place. When a waiting thread has failed the batch TensorFlow waits
    for, TensorFlow turns that failure into its own error in C++ that runs a little Python (the error's
    constructor), and the main thread's handler runs there: a KeyboardInterrupt raised there would end as
    pybind11's ``error_already_set: MISMATCH``. The handler looks at the frame Python hands it (the main
    thread's own, :func:`_safe_to_raise`) and there raises nothing: the press is carried by TensorFlow's error
    (``tf.errors.UnknownError`` whose text ends ``KeyboardInterrupt: Ctrl-C while a batch was being read``),
    which ends ``fit`` at once. A handler the user installed is never replaced: Ctrl-C still fails the waits,
    and the user's handler does the rest.
    """

    # Re-entrant: a loader's finalizer (``_settle``) may run in the main thread while it holds the lock, when the
    # garbage collector runs inside a call made under it (``signal.signal``, a set's ``add``).
    _lock = threading.RLock()
    _settling = False  # inside _install / _uninstall: a _settle that re-enters then leaves it to the outer one
    _reader: socket.socket | None = None
    _writer: socket.socket | None = None
    _seen = 0  # Ctrl-C presses read off the socket so far
    _handled = 0  # Ctrl-C presses whose handler has run in the main thread (when the handler is daskfeed's)
    _ours = False  # whether daskfeed's handler is installed
    _carried = False  # a waiting thread off the main thread failed its wait for the latest press
    _changed = threading.Condition(_lock)
    _waiting = 0  # threads inside :meth:`waiting`
    _exiting = False
    _off_main = False  # whether a thread other than the main one ever waited for a batch
    _open: ClassVar[weakref.WeakSet] = weakref.WeakSet()  # loaders not closed yet

    # -- a loader's life ------------------------------------------------------------------------------

    @classmethod
    def opened(cls, owner: object) -> None:
        """A loader was made: install daskfeed's wakeup fd and handler if it is the first one open (from the
        main thread only, where Python allows it); they are put back once every open loader is closed or
        collected."""
        with cls._lock:
            cls._open.add(owner)
        weakref.finalize(owner, cls._settle)
        cls._settle()

    @classmethod
    def closed(cls, owner: object) -> None:
        """A loader was closed: when it was the last one open, put back what :meth:`opened` installed."""
        with cls._lock:
            cls._open.discard(owner)
        cls._settle()

    @classmethod
    def _settle(cls) -> None:
        """Installed while a loader is open, put back when none is. Only the main thread can change either,
        so a loader closed or collected in another thread is settled by the next call in the main thread
        (another loader's, or Python's exit)."""
        if threading.current_thread() is not threading.main_thread():
            return
        with cls._lock:
            if cls._settling:  # re-entered by a finalizer while this thread installs or puts back
                return
            wanted = any(True for _ in cls._open) and not cls._exiting  # a loader being collected is not
            cls._settling = True
            try:
                if wanted and cls._reader is None:
                    cls._install()
                elif not wanted and cls._reader is not None:
                    cls._uninstall()
            finally:
                cls._settling = False

    @classmethod
    def _install(cls) -> None:
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        try:
            previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        except (ValueError, OSError):  # not the main thread of the main interpreter
            reader.close()
            writer.close()
            return
        if previous != -1:  # someone else's (an event loop's): leave it to them
            signal.set_wakeup_fd(previous)
            reader.close()
            writer.close()
            return
        cls._reader, cls._writer = reader, writer
        cls._carried = False
        cls._handled = cls._seen
        # Only Python's own handler is replaced; a process started with Ctrl-C ignored (SIG_IGN: ``nohup ...
        # &``, a batch system) or a handler of the user's is left as it is.
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, cls._on_sigint)
            cls._ours = True

    @classmethod
    def _uninstall(cls) -> None:
        if cls._ours:
            cls._ours = False
            if signal.getsignal(signal.SIGINT) == cls._on_sigint:  # not replaced since: put Python's back
                signal.signal(signal.SIGINT, signal.default_int_handler)
        reader, writer = cls._reader, cls._writer
        with contextlib.suppress(ValueError, OSError):
            previous = signal.set_wakeup_fd(-1)
            if writer is not None and previous != writer.fileno():
                # Someone else's since, who may put ours back when they finish: theirs stays, ours stays open.
                signal.set_wakeup_fd(previous)
                return
        cls._drain()
        cls._reader = cls._writer = None
        if reader is not None:
            reader.close()
        if writer is not None:
            writer.close()

    # -- Ctrl-C ---------------------------------------------------------------------------------------

    @classmethod
    def _on_sigint(cls, signum: int, frame: Any) -> None:
        """Python's own Ctrl-C, except in the one place it would break TensorFlow (see the class's docs)."""
        with cls._lock:
            cls._handled += 1
            carried, cls._carried = cls._carried, False
        if carried and not _safe_to_raise(frame):
            return  # TensorFlow's error, on its way out, says "KeyboardInterrupt: Ctrl-C while a batch was being read"
        signal.default_int_handler(signum, frame)

    @classmethod
    def fail_wait(cls) -> KeyboardInterrupt:
        """The error a waiting thread raises for a Ctrl-C; the main thread's KeyboardInterrupt follows it."""
        if cls._ours and threading.current_thread() is not threading.main_thread():
            with cls._lock:
                cls._carried = True
        return KeyboardInterrupt("Ctrl-C while a batch was being read")

    @classmethod
    @contextlib.contextmanager
    def waiting(cls) -> Iterator[None]:
        """Marks a thread that waits for a batch, so that Python's exit can make it stop waiting first."""
        with cls._lock:
            cls._waiting += 1
            if threading.current_thread() is not threading.main_thread():
                cls._off_main = True
        try:
            yield
        finally:
            with cls._lock:
                cls._waiting -= 1
                cls._changed.notify_all()

    @classmethod
    def serving(cls) -> None:
        """Marks a batch served without a wait; one served off the main thread matters at exit, as for
        :meth:`waiting`."""
        if not cls._off_main and threading.current_thread() is not threading.main_thread():
            with cls._lock:
                cls._off_main = True

    @classmethod
    def check(cls, presses: int) -> None:
        """Raise if the wait that began when the Ctrl-C count was ``presses`` must stop: Ctrl-C or exit."""
        if cls._exiting:
            raise DaskfeedError("Python is exiting while a batch was being read")
        seen = cls.count()
        # Ctrl-C while TensorFlow holds the main thread: one pressed during this wait, or (with daskfeed's handler)
        # one pressed before it that the main thread has not handled yet, which it cannot until this wait ends.
        if seen != presses or (cls._ours and seen > cls._handled):
            raise cls.fail_wait()

    @classmethod
    def count(cls) -> int:
        """How many times Ctrl-C was pressed while daskfeed's wakeup fd was installed."""
        if cls._reader is None:
            return cls._seen
        with cls._lock:
            cls._drain()
            return cls._seen

    @classmethod
    def _drain(cls) -> None:
        """Count the presses written to the socket (under the lock)."""
        reader = cls._reader
        if reader is None:
            return
        try:
            while True:
                data = reader.recv(256)
                if not data:
                    break
                cls._seen += data.count(bytes([signal.SIGINT]))
        except (BlockingIOError, OSError):
            pass

    # -- exit -----------------------------------------------------------------------------------------

    @classmethod
    def at_exit(cls) -> None:
        """Let TensorFlow's threads out of Python before the interpreter finalizes (registered with ``atexit``).

        A tf.data thread that runs Python when finalization begins can never take the GIL again, and
        TensorFlow's iterator, destroyed during finalization, waits for it forever: a ``fit`` ended by Ctrl-C
        or an error would print its traceback and never exit. So, while Python still runs normally, every
        wait for a batch is failed, exit waits for the waiting threads to leave, and, when batches were
        served to other threads, the iterators are destroyed now: the traceback Python keeps of the error
        that ended the program (``sys.last_*``, which holds ``fit``'s frames) is let go and a collection
        runs, as TensorFlow's issue #21277 found works. What daskfeed installed is put back.
        """
        with cls._lock:
            cls._exiting = True
            cls._changed.wait_for(lambda: cls._waiting == 0, timeout=EXIT_WAIT_S)
            off_main = cls._off_main
        if off_main:
            sys.last_type = sys.last_value = sys.last_traceback = None
            gc.collect()
        cls._settle()


atexit.register(Interrupts.at_exit)  # at import: it runs after the handlers registered later


def _after_fork_in_child() -> None:
    """A forked child gets locks of its own: one a parent thread held at the fork would never be released."""
    Interrupts._lock = threading.RLock()
    Interrupts._settling = False
    Interrupts._changed = threading.Condition(Interrupts._lock)
    Interrupts._waiting = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
