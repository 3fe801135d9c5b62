"""pytest fixtures for the end-to-end tests: an emulator per test, its client and a kubeconfig."""
import pathlib

import pytest

from server import EmulatorServer, KubeClient


@pytest.fixture
def server():
    with EmulatorServer() as srv:
        yield srv


@pytest.fixture
def kube(server) -> KubeClient:
    return server.client()


@pytest.fixture
def kubeconfig(server, tmp_path) -> pathlib.Path:
    return server.write_kubeconfig(tmp_path / "kubeconfig")
