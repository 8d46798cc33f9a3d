import os

import pytest
import torch

# Tests run on 2 CPU cores next to other work: keep torch from oversubscribing.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def resnet20():
    from edgedyn.dynamic import DynamicNet
    from helpers import settle_bn

    return settle_bn(DynamicNet.from_name("resnet20", num_classes=10, input_size=32), 32)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    tiny convs run faster without OpenMP hand-offs on shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sigint_default() -> None:
    """``preexec_fn`` for a child that must see Ctrl-C: SIGINT back to its default. A job started
    in the background by a shell without job control (``cmd &`` in a script, as CI runners may)
    inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
