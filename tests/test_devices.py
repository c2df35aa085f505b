"""Backend names with a device, device mismatches, and the library's log (issue 15)."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest

import anycnn
from anycnn import models
from anycnn.backend import BackendUnavailableError, lookup, parse_name

strict = pytest.importorskip("array_api_strict")


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("cuda:1", ("cuda", "1")),
        ("torch:cuda:0", ("torch", "cuda:0")),
        (" CPU ", ("cpu", "")),
        ("array-api-strict:device1", ("array_api_strict", "device1")),
    ],
)
def test_parse_name(name, parsed):
    assert parse_name(name) == parsed


def test_a_device_in_the_name_gives_one_record_per_device():
    on_device1 = lookup("strict:device1")
    assert on_device1 is lookup("array_api_strict:device1")  # identity, so `is` checks hold
    assert on_device1.base is lookup("strict") and on_device1.label == "array_api_strict:device1"
    assert str(on_device1.default_device) == str(strict.Device("device1"))
    assert lookup("cpu:0") is lookup("numpy")  # the default device is the backend itself
    if lookup("torch").available:
        assert lookup("torch:cpu") is lookup("torch")
    x = on_device1.asarray(np.arange(3.0))
    assert x.device == strict.Device("device1")


def test_unknown_devices_and_unusable_backends_say_why():
    with pytest.raises(ValueError, match=r"backend 'array_api_strict' has no device 'device9'; "
                       r"devices here: .*device1"):  # fmt: skip
        lookup("strict:device9")
    with pytest.raises(ValueError, match=r"backend 'numpy' has no device '1'"):
        lookup("cpu:1")
    if lookup("torch").available:
        with pytest.raises(ValueError, match=r"backend 'torch' has no device 'cuda:3'"):
            lookup("torch:cuda:3")
    else:
        with pytest.raises(BackendUnavailableError, match=r"backend 'torch' is unavailable"):
            lookup("torch:cuda:3")
    if not lookup("cupy").available:
        with pytest.raises(BackendUnavailableError, match=r"backend 'cupy' is unavailable"):
            lookup("cuda:1")


def test_a_network_on_a_device_and_an_input_on_another_is_an_error_naming_both(rng):
    net = models.dlt(backend="strict:device1", dtype="float64")
    assert net.parameters()["conv1.kernel"].device == strict.Device("device1")
    x = strict.asarray(rng.random((2, 1, 28, 28)))  # on the default CPU_DEVICE
    with pytest.raises(
        ValueError,
        match=r"Network.forward: x is on device .*CPU_DEVICE.* but the network is on "
        r".*device1.* \(backend array_api_strict:device1\)",
    ):
        net.forward(x)
    y = net.predict(x)  # the high-level API brings the data over
    assert y.device == strict.Device("device1")
    net.to("strict")
    assert net.forward(x).device == strict.Device("CPU_DEVICE")
    with anycnn.use_backend("strict:device1") as record:
        assert anycnn.get_backend() is record
        assert models.dlt().backend is record


def test_auto_logs_why_it_falls_back(caplog):
    if lookup("cupy").available:
        pytest.skip("CUDA is usable here: auto does not fall back")
    anycnn.backend.registry._logged.clear()
    with caplog.at_level(logging.INFO, logger="anycnn"):
        assert lookup("auto") is lookup("numpy")
    assert any(
        "backend auto: CUDA is not usable (" in r.getMessage() and "using numpy" in r.getMessage()
        for r in caplog.records
    )


def test_the_library_is_silent_by_default():
    """A NullHandler: nothing reaches stderr unless the application configures logging."""
    code = (
        "import logging, anycnn; anycnn.backend.lookup('auto'); "
        "logging.getLogger('anycnn').warning('a warning nobody asked to see')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
