"""The registry on a real PostgreSQL database: versions, the bless rule, reject and rollback."""

from __future__ import annotations

import pytest

from shared import registry
from shared.db import upgrade_database


@pytest.fixture
def db(postgres_url: str) -> str:
    upgrade_database(postgres_url)
    return postgres_url


def add(db: str, name: str, test_map: float, task_id: str | None = None) -> dict:
    return registry.register(name=name, task_id=task_id, year=2000, window="year", layout="independent",
                             architecture="smallcnn", image_size=32, dataset_version="d1",
                             genres=["Drama"], years=[2000], metrics={"test": {"macro_map": test_map}},
                             exports={"prefix": f"models/{name}/x"}, url=db)


def status(db: str, name: str) -> dict[int, str]:
    return {row["version"]: row["status"] for row in registry.list_versions(name, url=db)}


def test_versions_count_up_per_name_and_a_task_registers_once(db: str) -> None:
    assert add(db, "genre-2000", 0.2, "task-a")["version"] == 1
    assert add(db, "genre-2000", 0.2, "task-b")["version"] == 2
    assert add(db, "genre-2001", 0.2, "task-c")["version"] == 1
    again = add(db, "genre-2000", 0.2, "task-a")
    assert again["version"] == 1
    assert len(registry.list_versions("genre-2000", url=db)) == 2
    found = registry.find_by_task("task-b", url=db)
    assert found is not None and found["version"] == 2
    assert registry.find_by_task("task-z", url=db) is None


def test_bless_rule_keeps_a_worse_version_as_candidate_with_the_reason(db: str) -> None:
    add(db, "genre-2000", 0.30)
    assert registry.bless("genre-2000", 1, url=db)["status"] == "blessed"
    add(db, "genre-2000", 0.295)  # within the tolerance of 0.01
    assert registry.bless("genre-2000", 2, tolerance=0.01, url=db)["status"] == "blessed"
    assert status(db, "genre-2000") == {1: "retired", 2: "blessed"}
    add(db, "genre-2000", 0.25)  # below the blessed 0.295 by more than the tolerance
    row = registry.bless("genre-2000", 3, tolerance=0.01, url=db)
    assert row["status"] == "candidate"
    assert "below the blessed 0.2950" in row["status_reason"]
    assert status(db, "genre-2000") == {1: "retired", 2: "blessed", 3: "candidate"}
    forced = registry.bless("genre-2000", 3, force=True, url=db)
    assert forced["status"] == "blessed" and forced["status_reason"].startswith("blessed by force")
    assert [r["version"] for r in registry.blessed_versions(url=db)] == [3]


def test_reject_retires_a_candidate_but_not_the_served_version(db: str) -> None:
    add(db, "genre-2000", 0.3)
    add(db, "genre-2000", 0.1)
    registry.bless("genre-2000", 1, url=db)
    rejected = registry.reject("genre-2000", 2, "looks wrong", url=db)
    assert rejected["status"] == "retired" and rejected["status_reason"] == "rejected: looks wrong"
    with pytest.raises(registry.RegistryError, match="roll back"):
        registry.reject("genre-2000", 1, "no", url=db)


def test_rollback_restores_the_previous_blessed_version_in_one_call(db: str) -> None:
    for value in (0.2, 0.21, 0.22):
        add(db, "genre-2000", value)
    registry.bless("genre-2000", 1, url=db)
    registry.reject("genre-2000", 2, "bad", url=db)  # never served: rollback must skip it
    registry.bless("genre-2000", 3, url=db)
    assert status(db, "genre-2000") == {1: "retired", 2: "retired", 3: "blessed"}
    restored = registry.rollback("genre-2000", url=db)
    assert restored["version"] == 1 and restored["status"] == "blessed"
    assert status(db, "genre-2000") == {1: "blessed", 2: "retired", 3: "retired"}
    # Nothing was blessed before version 1.
    with pytest.raises(registry.RegistryError, match="no earlier blessed version"):
        registry.rollback("genre-2000", url=db)
    # An explicit target: back to version 3.
    assert registry.rollback("genre-2000", to_version=3, url=db)["version"] == 3
    assert status(db, "genre-2000") == {1: "retired", 2: "retired", 3: "blessed"}
    with pytest.raises(registry.RegistryError, match="no version 9"):
        registry.rollback("genre-2000", to_version=9, url=db)


def test_bless_decision_is_a_pure_rule() -> None:
    assert registry.bless_decision({"test": {"macro_map": 0.2}}, None).blessed
    assert not registry.bless_decision({}, None).blessed
    blessed = {"test": {"macro_map": 0.2}}
    assert not registry.bless_decision({"test": {"macro_map": 0.1}}, blessed, 0.05).blessed
    assert registry.bless_decision({"test": {"macro_map": 0.16}}, blessed, 0.05).blessed
