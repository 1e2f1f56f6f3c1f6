"""The capacity ledger: reservations per executor, and the slots of one pass."""

from __future__ import annotations

from steadyrun.engine.ledger import CapacityLedger, CapacityUse
from steadyrun.executors.base import Capacity
from steadyrun.task import Resources

GiB = 1024**3


def test_admit_reserves_until_capacity_and_release_gives_back():
    ledger = CapacityLedger(Capacity(cpus=2, memory=4 * GiB), "local")
    one = Resources(cpus=1, memory=GiB)
    assert ledger.admit(one) == [] and ledger.admit(one) == []
    assert not ledger.fits(Resources(cpus=0.5)) and ledger.admit(Resources(cpus=0.5)) is None
    assert ledger.fits(Resources(cpus=0, memory=2 * GiB))
    assert not ledger.fits(Resources(cpus=0, memory=2 * GiB + 1))
    ledger.release(one, [])
    assert ledger.use() == CapacityUse("local", 1.0, 2, GiB, 4 * GiB, 0, 0)


def test_fractional_cpus_that_add_up_to_the_capacity_fit():
    ledger = CapacityLedger(Capacity(cpus=1, memory=GiB))
    for _ in range(10):
        assert ledger.admit(Resources(cpus=0.1)) is not None
    assert ledger.admit(Resources(cpus=0.1)) is None


def test_gpus_are_handed_out_lowest_first_and_come_back():
    ledger = CapacityLedger(Capacity(cpus=8, memory=GiB, gpus=[3, 1, 2]))
    assert ledger.admit(Resources(gpus=2)) == [1, 2]
    assert ledger.admit(Resources(gpus=2)) is None  # only one left: nothing reserved
    assert ledger.use().gpus_used == 2 and ledger.cpus_used == 1
    ledger.release(Resources(gpus=2), [1, 2])
    assert ledger.admit(Resources(gpus=3)) == [1, 2, 3]


def test_a_pass_admits_no_more_than_the_free_slots_counting_earlier_admissions():
    ledger = CapacityLedger(Capacity(cpus=16, memory=16 * GiB))
    ledger.open_pass(2)
    assert ledger.admit(Resources()) is not None
    assert ledger.admit(Resources()) is not None
    assert not ledger.fits(Resources()) and ledger.admit(Resources()) is None
    assert ledger.cpus_used == 2  # the refused one reserved nothing
    ledger.open_pass(0)
    assert ledger.admit(Resources(cpus=0)) is None
    ledger.open_pass(None)  # only capacity limits it
    assert all(ledger.admit(Resources()) is not None for _ in range(14))
    assert ledger.admit(Resources()) is None
