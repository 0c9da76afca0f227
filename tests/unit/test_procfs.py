"""What /proc says of a process: its container, from its cgroup (the sidecar's spans and the app side's
resource name the same one)."""

from __future__ import annotations

import pytest

from otelproc import procfs
from otelproc.app.links import ProcessResourceDetector

CID = "b" * 64


@pytest.mark.parametrize(
    "leaf, cid",
    [
        ("docker-" + "a" * 64 + ".scope", "a" * 64),
        ("cri-containerd-" + CID + ".scope", CID),
        ("c" * 64, "c" * 64),
        ("user.slice", None),
        ("054ad49c851de8945147c9409dd4ad94", None),
    ],
)
def test_container_id_from_cgroup(leaf, cid):
    assert procfs.container_id(leaf) == cid


@pytest.mark.parametrize(
    "lines, cid",
    [
        # cgroup v2: the one line
        ([("0", "", f"/kubepods.slice/kubepods-burstable.slice/cri-containerd-{CID}.scope")], CID),
        # v1 with the unified hierarchy beside it (containerd with cgroupfs): the "0::" line, not the v1 ones
        ([("4", "memory", "/kubepods/burstable/pod1/" + "d" * 64), ("0", "", f"/kubepods/burstable/pod1/{CID}")], CID),
        ([("0", "", "/user.slice/user-0.slice/session-1.scope")], None),  # not in a container
        ([("4", "memory", "/kubepods/" + CID)], None),  # no unified hierarchy: the kernel side names no cgroup
    ],
)
def test_own_container_id_is_the_leaf_of_the_cgroup_v2_path(monkeypatch, lines, cid):
    monkeypatch.setattr(procfs, "cgroups", lambda pid: lines)
    assert procfs.own_container_id() == cid


def test_the_resource_detector_names_the_container_only_in_one(monkeypatch):
    monkeypatch.setattr(procfs, "cgroups", lambda pid: [("0", "", f"/system.slice/docker-{CID}.scope")])
    assert ProcessResourceDetector().detect().attributes["container.id"] == CID
    monkeypatch.setattr(procfs, "cgroups", lambda pid: [("0", "", "/user.slice")])
    assert "container.id" not in ProcessResourceDetector().detect().attributes
