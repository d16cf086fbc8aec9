"""deploy/keda/: the carbon-aware ScaledObject validates against KEDA's ScaledObject schema (the pydantic models
cloudcoil generates from KEDA's CRDs, PyPI cloudcoil-models-keda; a round trip must give the document back, so an
unknown or misspelt field fails), and its query is the one the promtool unit tests evaluate."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from helpers import REPO
from test_deploy import _differences

KEDA = REPO / "deploy" / "keda" / "carbon-aware-scaledobject.yaml"
CARBON_TESTS = REPO / "deploy" / "prometheus" / "tests" / "wattlens-carbon.test.yaml"


def validate_scaled_object(doc: dict[str, Any]) -> None:
    from cloudcoil.models.keda.v1alpha1 import ScaledObject

    assert (doc["apiVersion"], doc["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    back = ScaledObject.model_validate(doc).model_dump(by_alias=True, exclude_unset=True, mode="json")
    if back != doc:
        raise ValueError(f"fields KEDA's ScaledObject does not have or types it does not allow:\n"
                         f"{_differences(doc, back)}")


def test_the_scaled_object_is_valid_for_keda() -> None:
    validate_scaled_object(yaml.safe_load(KEDA.read_text()))


@pytest.mark.parametrize("mutate", [
    lambda spec: spec.update(minReplicas=0),  # the HPA's name, not KEDA's minReplicaCount
    lambda spec: spec.update(maxReplicaCount="ten"),
    lambda spec: spec["triggers"][0].pop("type"),  # required
])
def test_the_validation_catches_mistakes(mutate: Any) -> None:
    doc = yaml.safe_load(KEDA.read_text())
    mutate(doc["spec"])
    with pytest.raises(ValueError, match="ScaledObject"):
        validate_scaled_object(doc)


def test_its_query_is_the_one_the_rule_tests_evaluate() -> None:
    trigger = yaml.safe_load(KEDA.read_text())["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    tested = [case["expr"].strip() for test in yaml.safe_load(CARBON_TESTS.read_text())["tests"]
              for case in test.get("promql_expr_test", [])]
    assert tested.count(trigger["metadata"]["query"]) == 2  # with a clean grid's headroom, and with no data
