"""The rendered Deployment of the example app runs for real under `podman kube play`.

KWOK pods run nothing, so this is where rendered manifests meet real
containers: the scaffolded example, with its image set to the busybox test
app (tests/fixtures/images, built locally, no registry), is rendered,
played by Podman and answers its health check over the pod's network.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ruamel.yaml import YAML

from ondeck.kube.render import dump, manifests
from ondeck.spec.load import parse, render_spec
from ondeck.state.desired import render

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "src" / "ondeck" / "scaffold" / "example" / "ondeck.yaml"
SETUP = ROOT / "scripts" / "podman-setup.sh"
BUILD = ROOT / "tests" / "fixtures" / "images" / "build.sh"
RUN = uuid.uuid4().hex[:8]


def _podman(*args: str, check: bool = True) -> str:
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, check=False, timeout=180
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {result.stderr}")
    return result.stdout.strip()


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("podman kube play here needs root (Podman with runc) or CI=true")
    if shutil.which("podman") is None or shutil.which("catatonit") is None:
        subprocess.run(["bash", str(SETUP)], check=True)
    repo = f"localhost/ondeck-kube-{RUN}"
    subprocess.run(["bash", str(BUILD), repo], check=True, stdout=subprocess.DEVNULL)
    yield f"{repo}:1"
    subprocess.run(["bash", str(BUILD), "--remove", repo], check=False)


def _example_with(image: str) -> str:
    """The scaffolded example, its web service running `image` (which listens on 8080)."""
    data = YAML(typ="safe").load(EXAMPLE.read_text())
    web = data["services"]["web"]
    web.pop("command")
    web.update({"image": image, "port": 8080, "replicas": 1})
    data["app"] = f"shop{RUN}"
    data["runtime"] = "container"
    data.pop("environments", None)
    stream = io.StringIO()
    YAML(typ="safe").dump(data, stream)
    return stream.getvalue()


def test_the_example_deployment_plays_under_podman_and_answers_its_health_check(
    image: str, tmp_path: Path
) -> None:
    spec = render_spec(parse(_example_with(image)), None)
    objects = [o for o in manifests(render(spec, "default", "", "")) if o["kind"] != "Namespace"]
    # podman kube play takes workloads, ConfigMaps and claims; Services and Ingresses
    # are for a cluster's network, which a single host does not have.
    playable = [
        o for o in objects if o["kind"] in ("Deployment", "ConfigMap", "PersistentVolumeClaim")
    ]
    deployment = next(o for o in playable if o["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"] == {
        "path": "/healthz",
        "port": "http",
    }
    manifest = tmp_path / "web.yaml"
    manifest.write_text(dump(playable))
    try:
        _podman("kube", "play", "--replace", str(manifest))
        pod = "web-pod-0"
        ip = _pod_ip(pod)
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.get(f"http://{ip}:8080/healthz", timeout=2)
                if answer.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, _podman(
                "logs", "--tail", "20", f"{pod}-web", check=False
            )
            time.sleep(0.2)
        page = httpx.get(f"http://{ip}:8080/", timeout=2)
        assert page.text.strip() == "version 1"
        env = json.loads(_podman("inspect", f"{pod}-web", "--format", "{{json .Config.Env}}"))
        assert f"ONDECK_APP=shop{RUN}" in env and "GREETING=Hello" in env
    finally:
        _podman("kube", "down", str(manifest), check=False)
        _podman("volume", "rm", "-f", "ondeck-data", check=False)


def _pod_ip(pod: str) -> str:
    deadline = time.monotonic() + 60
    while True:
        out = _podman(
            "inspect", f"{pod}-web", "--format", "{{json .NetworkSettings.Networks}}", check=False
        )
        if out:
            networks = json.loads(out)
            for network in networks.values():
                if network.get("IPAddress"):
                    return str(network["IPAddress"])
        assert time.monotonic() < deadline, f"{pod} got no IP address"
        time.sleep(0.2)
