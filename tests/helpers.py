"""Shared test helpers (importable as ``helpers``: tests/ is on sys.path under pytest)."""

import torch


def settle_bn(net, size, batches=3, seed=0):
    """Give BatchNorm realistic statistics (as a trained net has) so outputs are O(1)."""
    gen = torch.Generator().manual_seed(seed)
    net.set_subnet(net.full_spec())
    for _, m in net.bn_layers():
        m.reset_running_stats()
        m.momentum = None
    net.train()
    with torch.no_grad():
        for _ in range(batches):
            net(torch.randn(8, 3, size, size, generator=gen))
    for _, m in net.bn_layers():
        m.momentum = 0.1
    net.eval()
    return net
