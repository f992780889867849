"""Leaving a cluster: when the host is ready for it, what history says, what the store keeps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ondeck.leaving import Left, host_ready
from ondeck.spec.model import Service
from ondeck.state.desired import Desired, DesiredService
from ondeck.state.live import Live, LiveInstance, Phase
from ondeck.store import ClusterMark, Store


def desired(**replicas: int) -> Desired:
    built = [
        DesiredService(name, Service.model_validate({"command": ["app"], "replicas": n}), "new")
        for name, n in sorted(replicas.items())
    ]
    return Desired("shop", "staging", "rev", "process", tuple(built))


def inst(id: str, fp: str = "new", phase: Phase = Phase.RUNNING, **fields: Any) -> LiveInstance:
    return LiveInstance(id, id.rsplit("-", 1)[0], fp, "rev", phase, **{"ready": True, **fields})


def test_the_host_is_ready_when_every_service_has_its_replicas_ready_at_its_release() -> None:
    want = desired(web=2, worker=1)
    both = [inst("web-1"), inst("web-2"), inst("worker-1")]
    assert host_ready(want, Live("staging", tuple(both)))
    assert not host_ready(want, Live("staging", tuple(both[1:])))  # one web missing
    not_ready = [inst("web-1"), inst("web-2", ready=False), inst("worker-1")]
    assert not host_ready(want, Live("staging", tuple(not_ready)))
    old = [inst("web-1"), inst("web-2", fp="old"), inst("worker-1")]  # an older release
    assert not host_ready(want, Live("staging", tuple(old)))
    stopping = [inst("web-1"), inst("web-2", phase=Phase.STOPPING), inst("worker-1")]
    assert not host_ready(want, Live("staging", tuple(stopping)))
    assert host_ready(desired(), Live("staging", ()))  # nothing to run: nothing to wait for


def test_history_lists_each_deletion_and_how_to_delete_what_was_kept() -> None:
    mark = ClusterMark("shop", "shop-staging", "/etc/kube", "prod")
    left = Left(
        mark, ("Deployment/shop-staging/web",), ("PersistentVolumeClaim/shop-staging/data",)
    )
    assert left.actions() == [
        "delete Deployment/shop-staging/web (the environment left the cluster)",
        "keep PersistentVolumeClaim/shop-staging/data (it holds the data dir): "
        "`kubectl --context prod -n shop-staging delete persistentvolumeclaim data` deletes it",
        "keep Namespace/shop-staging (it may hold what was kept): "
        "`kubectl --context prod delete namespace shop-staging` deletes it and everything "
        "left in it",
    ]
    assert left.summary() == (
        "left the cluster (namespace shop-staging): deleted 1 object(s); kept "
        "PersistentVolumeClaim/shop-staging/data (the data dir): `kubectl --context prod "
        "-n shop-staging delete persistentvolumeclaim data` deletes it"
    )


def test_the_store_keeps_where_an_environment_has_objects_until_cleared(tmp_path: Path) -> None:
    mark = ClusterMark("shop", "shop-staging", None, None)
    with Store(tmp_path / "ondeck.db") as store:
        assert store.cluster_mark("staging") is None
        store.put_cluster_mark("staging", mark)
    with Store(tmp_path / "ondeck.db") as store:  # a restarted controller reads it
        assert store.cluster_mark("staging") == mark
        assert store.cluster_mark("production") is None
        store.clear_cluster_mark("staging")
        assert store.cluster_mark("staging") is None
