"""The chain trains its language model in a background thread beside the DMU demo."""

import threading

import pytest

from clipmoe_demo.chain.run import in_background


def test_the_result_comes_back_after_the_work_ran_in_another_thread():
    started = threading.Event()
    release = threading.Event()
    seen = {}

    def work():
        seen["thread"] = threading.current_thread()
        started.set()
        release.wait()
        return "model dir"

    result = in_background(work)
    assert started.wait(10)  # running while the caller goes on
    assert seen["thread"] is not threading.current_thread() and seen["thread"].daemon
    release.set()
    assert result() == "model dir"


def test_an_error_in_the_background_is_raised_in_the_caller():
    def work():
        raise ValueError("pretrain.json: no records")

    result = in_background(work)
    with pytest.raises(ValueError, match="pretrain.json: no records"):
        result()
