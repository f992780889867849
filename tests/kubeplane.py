"""A real Kubernetes control plane for a test session (scripts/k8s-control-plane.sh).

etcd, kube-apiserver, kube-controller-manager and kube-scheduler are the real
components built from the Go module proxy; KWOK stands in for the kubelet only
(no kubelet can run containers here), marking scheduled pods Running and Ready
on a simulated node. Loaded as a pytest plugin (pyproject's addopts); every
test using the `control_plane` fixture is marked `kubernetes` and runs last, so
`make test` runs the others while the binaries build in the background
(`-m "not kubernetes"`, then `-m kubernetes` once built).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "k8s-control-plane.sh"


@dataclass(frozen=True)
class ControlPlane:
    directory: Path
    kubeconfig: Path

    def restart(self, component: str) -> None:
        """Stop one component and start it again (same flags, same data)."""
        subprocess.run(
            ["bash", str(SCRIPT), "restart", str(self.directory), component],
            check=True,
            timeout=120,
        )


MARK = "kubernetes"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARK}: needs the Kubernetes control plane (runs last)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that use the control plane, and move them to the end of the run."""
    for item in items:
        if "control_plane" in getattr(item, "fixturenames", ()):
            item.add_marker(MARK)
    items.sort(key=lambda item: item.get_closest_marker(MARK) is not None)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    directory = tmp_path_factory.mktemp("k8s")
    # The build is a no-op when cached; a cold one takes a while, hence the long timeout.
    subprocess.run(["bash", str(SCRIPT), "start", str(directory)], check=True, timeout=3600)
    try:
        yield ControlPlane(directory, directory / "kubeconfig")
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(directory)], check=False, timeout=120)
