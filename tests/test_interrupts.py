"""daskfeed as a guest in the process: what it installs for Ctrl-C is there only while a loader is open, never
in place of the user's, and it leaves the user's profiler running."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import join_daskfeed_threads

import daskfeed

LIFE = """
import gc, signal, numpy as np, daskfeed
from daskfeed.interrupts import Interrupts

def wakeup_fd():
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd)
    return fd

def installed():
    return signal.getsignal(signal.SIGINT) == Interrupts._on_sigint, wakeup_fd() != -1

x = np.zeros((100, 2), "f4")
print("before", installed(), signal.getsignal(signal.SIGINT) is signal.default_int_handler)
a = daskfeed.Loader(x, batch_size=10)
b = daskfeed.Loader(x, batch_size=10)
print("two open", installed())
for _ in a:
    pass
a.close()
print("one closed", installed())
del b
gc.collect()
print("other dropped", installed(), signal.getsignal(signal.SIGINT) is signal.default_int_handler)
c = daskfeed.Loader(x, batch_size=10)
try:
    signal.raise_signal(signal.SIGINT)
    print("ctrl-c", "nothing")
except KeyboardInterrupt:
    print("ctrl-c", "KeyboardInterrupt")
c.close()
got = []
def mine(signum, frame):
    got.append(signum)
signal.signal(signal.SIGINT, mine)
with daskfeed.Loader(x, batch_size=10) as d:
    print("user's handler, loader open", signal.getsignal(signal.SIGINT) is mine, installed()[1])
    for _ in d:
        pass
    signal.raise_signal(signal.SIGINT)
print("user's handler, after", signal.getsignal(signal.SIGINT) is mine, got == [signal.SIGINT], installed())
"""


def test_what_a_loader_installs_is_there_only_while_one_is_open_and_never_in_place_of_the_user_s(tmp_path):
    script = tmp_path / "life.py"
    script.write_text(LIFE)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [
        "before (False, False) True",
        "two open (True, True)",
        "one closed (True, True)",  # b is still open
        "other dropped (False, False) True",  # the last one collected: Python's own handler and no wakeup fd
        "ctrl-c KeyboardInterrupt",  # with daskfeed's handler, Ctrl-C is Python's KeyboardInterrupt
        "user's handler, loader open True True",  # the wakeup fd still tells waiting threads of a press
        "user's handler, after True True (False, False)",
    ], done.stderr[-3000:]


COLLECTED_WHILE_INSTALLING = """
import gc, signal, numpy as np, daskfeed
from daskfeed.interrupts import Interrupts

x = np.zeros((10, 1), "f4")
first = daskfeed.Loader(x, batch_size=2)
first.itself = first  # a cycle: only the collector frees it, whenever it next runs
first.close()  # the last open loader: what it installed is put back
install = Interrupts._install

def install_while_collecting():
    global first
    first = None
    gc.collect()  # first's finalizer runs here, in the main thread, while the second loader installs
    install()

Interrupts._install = classmethod(lambda cls: install_while_collecting())
second = daskfeed.Loader(x, batch_size=2)
print(signal.getsignal(signal.SIGINT) == Interrupts._on_sigint)
second.close()
print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)
"""


def test_a_loader_collected_while_another_installs_does_not_hang_the_process(tmp_path):
    """The collector may run a dropped loader's finalizer at any allocation, also inside daskfeed's own
    install or put-back in the main thread (seen as a hang of the suite on Python 3.13): it must not wait for
    the lock that thread holds."""
    script = tmp_path / "collected.py"
    script.write_text(COLLECTED_WHILE_INSTALLING)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["True", "True"], done.stderr[-3000:]


def explode_on_chunk_2(block, block_info=None):
    if block_info[0]["chunk-location"][0] == 2:
        raise OSError("disk gone")
    return block


def profiled_after_the_loaders() -> None:
    """Called once every loader is closed: the profiler must still see it."""


@pytest.mark.slow
@pytest.mark.tf
def test_a_running_cprofile_survives_loaders_their_read_errors_and_fit():
    import cProfile
    import gc
    import pstats
    import signal

    import dask.array as da
    import keras
    import tensorflow as tf

    handler = signal.getsignal(signal.SIGINT)
    x = da.from_array(np.random.default_rng(0).random((800, 3), "f4"), chunks=(100, 3))
    y = da.from_array(np.zeros(800, "f4"), chunks=100)
    broken = x.map_blocks(explode_on_chunk_2, dtype="f4")
    profile = cProfile.Profile()
    profile.enable()
    try:
        for door in (daskfeed.as_sequence, daskfeed.as_dataset):
            model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
            model.compile("sgd", "mse")
            data = door(broken, y, batch_size=50, seed=0, memory_budget="20KB", reads_per_chunk=1, shuffle=False)
            raised = (daskfeed.ChunkReadError, tf.errors.OpError)
            with pytest.raises(raised, match="reading array x chunk 2"):
                model.fit(data, epochs=1, shuffle=False, verbose=0)
            assert isinstance(data.loader.error, daskfeed.ChunkReadError)
            data.loader.close()
            good = door(x, y, batch_size=50, seed=0, memory_budget="20KB")
            model.fit(good, epochs=1, shuffle=False, verbose=0)
            good.loader.close()
        del data, good
        gc.collect()
        profiled_after_the_loaders()
    finally:
        profile.disable()
    names = {func[2] for func in pstats.Stats(profile).stats}
    assert "profiled_after_the_loaders" in names and "fit" in names
    assert signal.getsignal(signal.SIGINT) == handler
    assert join_daskfeed_threads() == []
