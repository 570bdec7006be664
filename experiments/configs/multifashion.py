"""MultiFashion (Fashion-MNIST pairs, built like MultiMNIST) with Multi-LeNet."""

from experiments.configs import multimnist


def get_config(arg=None):
    c = multimnist.get_config(arg)
    c.dataset.name = "multi_fashion"
    return c
