"""Kubelet log-directory names: rescans only while some workload has been unknown for a short while."""

from __future__ import annotations

from pathlib import Path

from exporter.workloads.kubernetes import KubeletLogs

UID = "0000000a-0000-4000-8000-00000000000a"


def test_a_workload_without_logs_stops_asking_for_rescans(tmp_path: Path) -> None:
    (tmp_path / "pods").mkdir()
    (tmp_path / "containers").mkdir()
    logs = KubeletLogs(tmp_path, rescan_s=10.0, give_up_s=120.0)
    scans = []
    real = logs.__class__.refresh

    def counting(now: float) -> None:
        before = logs._scanned_at
        real(logs, now, [UID], ["ab" * 32])  # a pod and its pause container: neither has logs yet
        if logs._scanned_at != before:
            scans.append(now)

    for now in range(0, 300, 5):
        counting(float(now))
    assert scans == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0, 110.0]
    assert not logs.rescan_due(300.0)
    # The pod's log directory appears: a new unknown workload asks again, and names are found.
    (tmp_path / "pods" / f"shop_web-1_{UID}").mkdir()
    logs.refresh(300.0, [UID, "0000000b-0000-4000-8000-00000000000b"], ["ab" * 32])
    assert logs.pod(UID) is not None
