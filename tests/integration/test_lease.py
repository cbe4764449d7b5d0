"""The operate lease is mutual exclusion on both stores: operators started at the same
moment on a local folder and on the S3 endpoint (moto server), and one that outlived its
lease."""

from __future__ import annotations

import threading
import time
import uuid

import boto3
import pytest

from rayops.operate.state import Lease, OperateError
from rayops.storage import Location, resolve

pytestmark = pytest.mark.integration


@pytest.fixture(params=["local", "s3"])
def folder(request, tmp_path) -> Location:
    if request.param == "local":
        return resolve(str(tmp_path / "operate"))
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"lease-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return resolve(f"s3://{bucket}/operate", endpoint)


def _race(folder: Location, operators: int) -> list[Lease]:
    """``operators`` take the lease at the same moment; those that got it."""
    leases = [Lease(folder, lease_s=60) for _ in range(operators)]
    start, won, failed = threading.Barrier(operators), [], []

    def take(lease: Lease) -> None:
        start.wait()
        try:
            lease.acquire()
            won.append(lease)
        except OperateError:  # the one clear answer a losing operator may get
            pass
        except Exception as exc:
            failed.append(exc)

    threads = [threading.Thread(target=take, args=(lease,)) for lease in leases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failed, failed
    return won


def test_operators_started_at_the_same_moment_one_holds_the_lease(folder):
    for round_ in range(8):
        won = _race(folder.join(f"pipeline-{round_}"), operators=4)
        try:
            assert len(won) == 1, f"round {round_}: {len(won)} operators hold the lease"
            (holder,) = won
            assert holder.held()
        finally:
            for lease in won:
                lease.release()


def test_an_operator_that_outlived_its_lease_cannot_take_it_back(folder):
    stalled, successor = Lease(folder, lease_s=1.0), Lease(folder, lease_s=60)
    stalled.acquire()
    stalled._stop.set()  # paused (a long GC, a suspended VM): it stops renewing
    time.sleep(1.2)
    successor.acquire()
    try:
        assert successor.held() and not stalled.held()
        number, _ = stalled._newest()
        assert not stalled._claim(number - 1, time.time() + 60)  # its next write loses
        assert successor.held()
    finally:
        successor.release()
    assert not successor.held()
    taken = Lease(folder, lease_s=60)
    taken.acquire()  # released: free at once
    taken.release()
