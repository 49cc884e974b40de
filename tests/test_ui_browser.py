"""The platform as its users see it: the real Dagster webserver in headless Chromium.

One module-wide setup (tests/ui_fixtures.py): the local stack, yesterday's (GMT+8)
2,000-row source with its extract and snapshot materialized, the webserver, a browser.
Then: the lineage is drawn; one (date, range) partition of user_profile_uploaded is
materialized from the UI and another through the GraphQL API, and both arrive at the
local endpoint. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
import re
import time

import dagster as dg
import pytest
from dagster_graphql import DagsterGraphQLClient
from ui_fixtures import (  # noqa: F401  (fixtures)
    CONTRACT,
    PreparedDay,
    Webserver,
    browser_context,
    page,
    prepared_day,
    runs_with_tags,
    screenshot,
    wait_for_run,
    webserver,
)

from datahub_assets.lake import DataLake
from datahub_assets.partitions import DATE_DIM, RANGE_DIM, batch_slice, range_keys
from datahub_assets.upload.batches import read_batches

LINEAGE = ["user_profile_extract", "user_profile_snapshot", "user_profile_uploaded", "user_profile_delivered"]
LOCATION = "datahub_assets"  # workspace.yaml
REPOSITORY = "__repository__"  # the name Dagster gives a Definitions object


def range_ids(day: PreparedDay, key: str) -> list[str]:
    """The ids the range `key` must deliver, read from the snapshot independently of the run."""
    keys = range_keys(CONTRACT.batch_ranges)
    snapshot = DataLake(root=day.env["DATAHUB_DATA_DIR"]).snapshot_path(CONTRACT.dataset, day.day)
    numbers = batch_slice(keys.index(key), len(keys), day.batches)
    return [json.loads(row)["id"] for batch in read_batches(snapshot, numbers) for row in batch.rows]


def assert_delivered(day: PreparedDay, key: str) -> None:
    ids = range_ids(day, key)
    assert ids, f"range {key} has no rows: pick a non-empty range"
    reconciliation = day.stack.endpoint.reconcile(CONTRACT.data_uuid, ids)
    assert reconciliation["missing"] == 0, reconciliation


def graph_geometry(page) -> tuple[dict[str, dict], list[tuple[float, float, float, float]]]:  # noqa: ANN001
    """Asset nodes (name -> box) and edges (start and end points) as the graph's SVG draws them."""
    drawn = page.evaluate(
        """() => ({
          nodes: [...document.querySelectorAll('svg foreignObject')].map(n => ({
            text: n.textContent, x: +n.getAttribute('x'), y: +n.getAttribute('y'),
            w: +n.getAttribute('width'), h: +n.getAttribute('height')})),
          edges: [...document.querySelectorAll('svg path[marker-end]')].map(p => p.getAttribute('d')),
        })"""
    )
    nodes = {}
    for name in LINEAGE:
        (box,) = [n for n in drawn["nodes"] if name in n["text"]]
        nodes[name] = box
    edges = []
    for d in drawn["edges"]:
        numbers = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", d)]
        edges.append((numbers[0], numbers[1], numbers[-2], numbers[-1]))
    return nodes, edges


def connects(edge: tuple[float, float, float, float], source: dict, target: dict, slack: float = 12) -> bool:
    """The edge starts on the source's box and ends (its arrow head) at the target's box."""
    def near(x: float, y: float, box: dict) -> bool:
        return box["x"] - slack <= x <= box["x"] + box["w"] + slack and box["y"] - slack <= y <= box["y"] + box["h"] + slack

    x1, y1, x2, y2 = edge
    return near(x1, y1, source) and near(x2, y2, target)


def show_successful_run(page, webserver: Webserver, run_id: str, name: str) -> None:  # noqa: ANN001
    """The run's page shows it succeeded: the status tag and the RUN_SUCCESS event."""
    page.goto(f"{webserver.url}/runs/{run_id}")
    page.get_by_text("Success", exact=True).first.wait_for()
    page.get_by_text("RUN_SUCCESS", exact=True).first.wait_for()  # the logs have loaded
    screenshot(page, name)


def test_lineage_extract_snapshot_uploaded_delivered_is_drawn(webserver: Webserver, page):  # noqa: ANN001
    page.goto(f"{webserver.url}/asset-groups")
    # The global lineage page, filtered to the dataset's group with the selection syntax.
    page.get_by_role("textbox", name="Search and filter assets").focus()
    page.keyboard.type("group:user_profile")
    page.keyboard.press("Enter")
    graph = page.locator("svg").filter(has=page.locator("foreignObject"))
    for name in LINEAGE:
        graph.get_by_text(name, exact=True).wait_for(state="visible")
    page.wait_for_function(f"document.querySelectorAll('svg path[marker-end]').length >= {len(LINEAGE) - 1}")
    nodes, edges = graph_geometry(page)
    screenshot(page, "ui-lineage-user_profile")

    for source, target in zip(LINEAGE, LINEAGE[1:]):
        assert any(connects(e, nodes[source], nodes[target]) for e in edges), (source, target, edges)
        # Drawn downstream: the arrow heads point at the later stage, never back.
        assert not any(connects(e, nodes[target], nodes[source], slack=0) for e in edges), (target, source, edges)
    # ...and nothing skips the snapshot: every upload reads the conformed data.
    assert not any(connects(e, nodes[LINEAGE[0]], nodes[LINEAGE[2]], slack=0) for e in edges)


def test_materialize_one_range_from_the_ui(prepared_day: PreparedDay, webserver: Webserver, page):  # noqa: ANN001
    key = prepared_day.nonempty_range_keys()[0]
    page.goto(f"{webserver.url}/assets/user_profile_uploaded")
    page.get_by_role("button", name=re.compile("Materialize…")).click()
    dialog = page.get_by_role("dialog").first
    date_input = dialog.get_by_placeholder(re.compile(r"^ex: "))
    date_input.wait_for()  # the dialog has loaded both dimensions
    dialog.get_by_text("Select a partition or create one").click()
    page.get_by_placeholder("Filter partitions").fill(key)
    page.get_by_role("menuitem").filter(has=page.get_by_title(key, exact=True)).click()
    dialog.get_by_text("Launch runs to materialize").click()  # closes the range list
    date_input.fill(prepared_day.day)
    date_input.press("Tab")
    launch = dialog.get_by_role("button", name="Launch 1 run")
    launch.wait_for()  # one date x one range: a single run, not a backfill
    screenshot(page, "ui-materialize-dialog")
    launch.click()

    tags = {f"dagster/partition/{DATE_DIM}": prepared_day.day, f"dagster/partition/{RANGE_DIM}": key}
    deadline = time.monotonic() + 30
    while not (runs := runs_with_tags(webserver, tags)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(runs) == 1, f"expected the UI to launch one run with {tags}, found {runs}"
    run_id = runs[0]["runId"]
    assert wait_for_run(webserver, run_id) == "SUCCESS", webserver.log_tail()
    assert_delivered(prepared_day, key)

    show_successful_run(page, webserver, run_id, "ui-run-success")


# Dagster names the per-dimension partition tags itself (dagster/partition/<dim>) and
# then warns that such two-level keys are non-compliant: expected here, nothing to fix.
@pytest.mark.filterwarnings("ignore:Non-compliant tag keys:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:Using variable_values:DeprecationWarning")  # gql, inside the client
def test_launch_one_range_through_graphql(prepared_day: PreparedDay, webserver: Webserver, page):  # noqa: ANN001
    key = prepared_day.nonempty_range_keys()[1]  # not the range the UI test sends
    partition = dg.MultiPartitionKey({DATE_DIM: prepared_day.day, RANGE_DIM: key})
    client = DagsterGraphQLClient("127.0.0.1", port_number=webserver.port)
    # No partition argument in the client: the tags are what Dagster reads. The
    # per-dimension tags make the asset see a MultiPartitionKey, not a plain string.
    run_id = client.submit_job_execution(
        "__ASSET_JOB",
        repository_location_name=LOCATION,
        repository_name=REPOSITORY,
        tags={
            "dagster/partition": str(partition),
            f"dagster/partition/{DATE_DIM}": prepared_day.day,
            f"dagster/partition/{RANGE_DIM}": key,
        },
        asset_selection=["user_profile_uploaded"],
    )
    assert wait_for_run(webserver, run_id) == "SUCCESS", webserver.log_tail()
    assert_delivered(prepared_day, key)

    show_successful_run(page, webserver, run_id, "ui-graphql-run-success")
    page.goto(f"{webserver.url}/assets/user_profile_uploaded?view=partitions")
    materialized = page.get_by_text(re.compile(r"^Materialized \(\d+\)$")).first
    materialized.wait_for()
    assert int(re.search(r"\d+", materialized.inner_text()).group()) >= 1
    screenshot(page, "ui-uploaded-partitions")

