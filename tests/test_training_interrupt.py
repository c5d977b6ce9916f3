"""ldm/training/interrupt.py: the first Ctrl-C is a request honoured at a step's end, the second acts at once."""
import os
import signal
import time

import pytest

from ldm.training.interrupt import StopOnInterrupt


@pytest.fixture
def default_sigint():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _press_ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.1)  # Python runs the handler at its next check, in the main thread


def test_first_interrupt_is_a_request_and_the_second_raises(default_sigint):
    with StopOnInterrupt() as stop:
        assert not stop.requested
        _press_ctrl_c()
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            _press_ctrl_c()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_handler_is_restored_when_no_interrupt_came(default_sigint):
    with StopOnInterrupt() as stop:
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    assert not stop.requested and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_disabled_keeps_the_default_behaviour(default_sigint):
    with StopOnInterrupt(enabled=False) as stop:
        with pytest.raises(KeyboardInterrupt):
            _press_ctrl_c()
    assert not stop.requested
