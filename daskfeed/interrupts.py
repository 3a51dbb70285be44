"""Ctrl-C for threads that wait on the user's behalf while the main thread is held in a TensorFlow op."""

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
import time
import weakref
from collections.abc import Iterator
from typing import Any, ClassVar

from daskfeed.errors import DaskfeedError

__all__ = ["Interrupts"]

#: How long Python's exit waits for threads to leave their waits for batches.
EXIT_WAIT_S = 5.0

#: Calls that make an exception object, during which a KeyboardInterrupt must not be raised.
_MAKING_AN_ERROR = ("__init__", "__new__", "__str__", "__repr__", "__instancecheck__", "__subclasscheck__")
_ERROR_MODULES = ("errors_impl.py", "errors.py")
#: Calls that clean up, which an exception raised on entry would skip (a ``with`` block's exit left undone
#: leaves TensorFlow's gradient tape stopped: the next ``fit`` then finds no gradients).
_CLEANING_UP = ("__exit__", "__aexit__", "__enter__", "__del__", "close")
#: Generators and coroutines, resumed by contextlib and await: raising on resume is raising in their cleanup.
_RESUMED = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR
#: The main thread's innermost Python function while it waits in a TensorFlow call: a ``tf.function`` (a fit
#: step) or ``next`` on a dataset's iterator.
_TENSORFLOW_WAITS = ("quick_execute", "iterator_get_next")
#: How long the main thread must sit in one such call before a tf.data thread's error is handed to it...
HAND_OVER_S = 1.0
#: ...and how long the failing thread looks for that before letting TensorFlow report the error its way.
HAND_OVER_GIVE_UP_S = 5.0


class Interrupts:
    """Tells threads that wait for batches that the user pressed Ctrl-C.

    ``model.fit`` holds the main thread inside a TensorFlow op that waits for the next batch, which a
    daskfeed thread (tf.data's) is computing; Python runs the SIGINT handler only when the main thread runs
    Python again, so Ctrl-C would wait for the read. Python also writes every signal's number to the
    *wakeup fd* the moment it arrives, from C: when no one else uses that fd (asyncio does, in the main thread
    of an event loop), daskfeed points it at a socket of its own and the waiting threads read it. A wait that
    began before the latest Ctrl-C then fails, TensorFlow returns, and Python raises ``KeyboardInterrupt``.
    """

    _lock = threading.Lock()
    _reader: socket.socket | None = None
    _seen = 0  # Ctrl-C presses read off the socket so far
    _handled = 0  # Ctrl-C presses whose handler has run in the main thread (when the handler is daskfeed's)
    _ours = False  # whether daskfeed's handler is installed
    _ignored = False  # whether the process ignored Ctrl-C (SIG_IGN) when daskfeed's handler replaced that
    _deferred = 0  # presses whose KeyboardInterrupt waits until TensorFlow's error is out of its C++ code
    _changed = threading.Condition(_lock)
    _waiting = 0  # threads inside :meth:`waiting`
    _exiting = False
    _off_main = False  # whether a thread other than the main one ever waited for a batch
    _handed: BaseException | None = None  # an error a tf.data thread handed to the main thread
    _owners: ClassVar[weakref.WeakSet] = weakref.WeakSet()  # loaders that handed an error over (once each)
    _sent = 0  # SIGINTs sent by :meth:`hand_to_main` whose byte on the wakeup fd is not read yet

    @classmethod
    def install(cls) -> None:
        """Point the wakeup fd at daskfeed's socket, from the main thread, if no one else uses it."""
        if threading.current_thread() is not threading.main_thread():
            return
        with cls._lock:
            if cls._reader is not None:
                return
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
            handler = signal.getsignal(signal.SIGINT)
            # A process started with Ctrl-C ignored (``nohup ... &``, a batch system) keeps ignoring presses;
            # daskfeed's handler is there only to carry a tf.data thread's error (:meth:`hand_to_main`).
            if handler is signal.default_int_handler or handler == signal.SIG_IGN:
                cls._ignored = handler == signal.SIG_IGN
                signal.signal(signal.SIGINT, cls._on_sigint)
                cls._ours = True

    @classmethod
    def _on_sigint(cls, signum: int, frame: object) -> None:
        """Python's own Ctrl-C, except when a waiting thread has just failed the batch TensorFlow waits for:
        TensorFlow is then turning that failure into a Python error, in C++ that runs a little Python (the
        error's constructor), and an exception raised there ends as pybind11's ``error_already_set:
        MISMATCH``. So the KeyboardInterrupt is raised by the first Python call in this thread that is not part
        of making the error: where Keras or the user's code handles it. The same carries a daskfeed error that
        a tf.data thread handed over (:meth:`hand_to_main`) to the main thread, in place of TensorFlow's copy."""
        with cls._lock:
            handed, cls._handed = cls._handed, None
            if handed is None and cls._ignored:
                return  # a Ctrl-C press, in a process that ignores them
            cls._handled += handed is None
            deferred = handed is None and cls._deferred > 0
            if deferred:
                cls._deferred -= 1
        if handed is None and not deferred:
            signal.default_int_handler(signum, frame)
            return
        error = handed if handed is not None else KeyboardInterrupt()

        def raise_soon(frame: Any, event: str, arg: Any) -> None:
            code = frame.f_code
            if (
                event != "call"
                or code.co_name in _MAKING_AN_ERROR + _CLEANING_UP
                or code.co_flags & _RESUMED
                or code.co_filename.endswith((*_ERROR_MODULES, "contextlib.py"))
            ):
                return
            sys.setprofile(None)
            raise error

        sys.setprofile(raise_soon)

    @classmethod
    def hand_to_main(cls, error: BaseException, owner: object) -> None:
        """Make the main thread raise ``error`` itself, once it waits in TensorFlow for what failed with it.

        A tf.data thread (``as_dataset``, or Keras's for ``as_sequence``) that raises ``error`` reaches the
        main thread as ``tensorflow.errors.UnknownError`` holding only its text, which ``except
        daskfeed.ChunkReadError`` does not catch. So the failing thread holds on to ``error`` until the main
        thread has sat in one TensorFlow call (``fit``'s step, ``next`` on an iterator) for
        :data:`HAND_OVER_S`: with this thread holding back, tf.data's buffers run dry and that call waits
        for it. It then sends the main thread a SIGINT that carries ``error``, raised where the main thread
        next calls Python, as for Ctrl-C. If that does not happen within :data:`HAND_OVER_GIVE_UP_S` (the
        consumer is another thread), or daskfeed does not handle Ctrl-C here, nothing changes. Each ``owner``
        (a loader) hands over its first error only: the calls tf.data makes after it fail too, and must not
        reach a later ``fit``.
        """
        main = threading.main_thread()
        if threading.current_thread() is main or cls._reader is None:
            return
        if signal.getsignal(signal.SIGINT) != cls._on_sigint:
            return
        with cls._lock:
            if owner in cls._owners:
                return
            cls._owners.add(owner)
        if not cls._main_waits_in_tensorflow(main.ident):
            return
        with cls._lock:
            if cls._handed is not None:
                return
            cls._handed = error
            cls._sent += 1
        signal.pthread_kill(main.ident, signal.SIGINT)

    @staticmethod
    def _main_waits_in_tensorflow(ident: int) -> bool:
        """Whether the main thread stays in one TensorFlow call for HAND_OVER_S (checked for at most
        HAND_OVER_GIVE_UP_S)."""
        deadline = time.monotonic() + HAND_OVER_GIVE_UP_S
        since, seen = time.monotonic(), None
        while time.monotonic() < deadline:
            frame = sys._current_frames().get(ident)
            here = None if frame is None else (frame, frame.f_lasti)
            if frame is None or frame.f_code.co_name not in _TENSORFLOW_WAITS:
                here = None
            if here is None or here != seen:
                since, seen = time.monotonic(), here
            elif time.monotonic() - since >= HAND_OVER_S:
                return True
            time.sleep(0.05)
        return False

    @classmethod
    def fail_wait(cls) -> KeyboardInterrupt:
        """The error a waiting thread raises for a Ctrl-C; the main thread's KeyboardInterrupt follows it."""
        if threading.current_thread() is not threading.main_thread():
            with cls._lock:
                cls._deferred += 1
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
    def at_exit(cls) -> None:
        """Let TensorFlow's threads out of Python before the interpreter finalizes (registered with ``atexit``).

        A tf.data thread that runs Python when finalization begins can never take the GIL again, and
        TensorFlow's iterator, destroyed during finalization, waits for it forever: a ``fit`` ended by Ctrl-C
        or an error would print its traceback and never exit. So, while Python still runs normally, every
        wait for a batch is failed, exit waits for the waiting threads to leave, and, when batches were
        served to other threads, the iterators are destroyed now: the traceback Python keeps of the error
        that ended the program (``sys.last_*``, which holds ``fit``'s frames) is let go and a collection
        runs, as TensorFlow's issue #21277 found works.
        """
        with cls._lock:
            cls._exiting = True
            cls._changed.wait_for(lambda: cls._waiting == 0, timeout=EXIT_WAIT_S)
            off_main = cls._off_main
        if off_main:
            sys.last_type = sys.last_value = sys.last_traceback = None
            gc.collect()
        reader = cls._reader
        if reader is not None and threading.current_thread() is threading.main_thread():
            with contextlib.suppress(ValueError, OSError):
                previous = signal.set_wakeup_fd(-1)
                if previous != cls._writer.fileno():  # someone else's since: put theirs back, keep ours open
                    signal.set_wakeup_fd(previous)
                    return
            cls._reader = None
            reader.close()
            cls._writer.close()

    @classmethod
    def count(cls) -> int:
        """How many times Ctrl-C was pressed since :meth:`install` (0 when not installed)."""
        reader = cls._reader
        if reader is None:
            return 0
        with cls._lock:
            try:
                while True:
                    data = reader.recv(256)
                    if not data:
                        break
                    presses = data.count(bytes([signal.SIGINT]))
                    ours = min(presses, cls._sent)  # signals :meth:`hand_to_main` sent are not Ctrl-C
                    cls._sent -= ours
                    if not cls._ignored:
                        cls._seen += presses - ours
            except (BlockingIOError, OSError):
                pass
            return cls._seen


atexit.register(Interrupts.at_exit)  # at import: it runs after the handlers registered later


def _after_fork_in_child() -> None:
    """A forked child gets locks of its own: one a parent thread held at the fork would never be released."""
    Interrupts._lock = threading.Lock()
    Interrupts._changed = threading.Condition(Interrupts._lock)
    Interrupts._waiting = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
