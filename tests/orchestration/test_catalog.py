"""What the Dagster catalog shows: owners, tags, code references and column schemas of every
asset, the checks of the audit and teaching stages, the code location's name."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from ml.tables import primary_table
from orchestration.definitions import defs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def graph():
    return defs.resolve_asset_graph()


def test_the_code_location_loads_and_is_named_learnloop():
    dg.Definitions.validate_loadable(defs)
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    [entry] = workspace["load_from"]
    assert entry["python_module"] == {"module_name": "orchestration.definitions",
                                      "working_directory": ".", "location_name": "learnloop"}


def test_every_asset_has_owners_a_stage_tag_and_a_code_reference(graph):
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        name = key.to_user_string()
        assert node.owners and all(o.startswith("team:") for o in node.owners), name
        assert node.tags.get("stage") == node.group_name, name
        refs = node.metadata.get("dagster/code_references")
        assert refs is not None and refs.code_references, name
        for ref in refs.code_references:
            assert Path(ref.file_path).exists(), (name, ref.file_path)


def test_python_assets_show_the_columns_of_the_table_they_write(graph):
    shown = 0
    for key in graph.get_all_asset_keys():
        table = primary_table(key.to_user_string())
        if table is None:
            continue
        schema = graph.get(key).metadata["dagster/column_schema"]
        assert [(c.name, c.type, c.description) for c in schema.columns] == \
            [(c.name, c.type, c.description) for c in table.columns]
        shown += 1
    assert shown == 9
    embeddings = graph.get(dg.AssetKey("interaction_embeddings")).metadata
    assert "vector" in [c.name for c in embeddings["dagster/column_schema"].columns]


def test_dbt_sources_are_the_assets_that_write_them(graph):
    fct = graph.get(dg.AssetKey("stg_interactions"))
    assert dg.AssetKey("interactions") in fct.parent_keys
    stg_review = graph.get(dg.AssetKey("stg_review_decisions"))
    assert dg.AssetKey("review_decisions") in stg_review.parent_keys


def test_the_audit_and_teaching_assets_have_their_checks(graph):
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert {("audit_candidates", "check_candidates_have_known_reasons"),
            ("audited_errors", "check_verdicts_are_consistent"),
            ("teacher_samples", "check_samples_are_reviewable"),
            ("preference_pairs", "check_pairs_differ")} <= checks
