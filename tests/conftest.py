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
