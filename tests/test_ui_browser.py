"""The platform as its users see it: the real Dagster webserver in headless Chromium.

One module-wide setup (tests/ui_fixtures.py): the local stack on a copy of the demo
contract cut into 3 ranges, the three dates before the business date delivered, the
business date's (yesterday in GMT+8) 2,000-row source with its extract and snapshot
materialized, the webserver, a browser; the daemon for the test that needs it.

Then: the lineage is drawn; one (date, range) partition of user_profile_uploaded is
materialized from the UI and another through the GraphQL API, and both arrive at the
local endpoint; the proof of delivery's plots show a point for each delivered date; the
README's one action in the UI delivers a whole date. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
import re
import time

import dagster as dg
import pytest
from dagster_graphql import DagsterGraphQLClient
from ui_fixtures import (  # noqa: F401  (fixtures)
    Daemon,
    PreparedDay,
    Webserver,
    browser_context,
    daemon,
    page,
    prepared_day,
    runs_with_tags,
    screenshot,
    wait_for_backfill,
    wait_for_run,
    webserver,
)

from datahub_assets.lake import DataLake
from datahub_assets.partitions import DATE_DIM, RANGE_DIM, batch_slice, range_keys, upload_partition_key
from datahub_assets.upload.batches import read_batches
from datahub_assets.upload.ledger import Ledger, LedgerEntry
from datahub_assets.upload.outcome import BatchStatus
from datahub_assets.upload.resources import create_delivery_engine

LINEAGE = ["user_profile_extract", "user_profile_snapshot", "user_profile_uploaded", "user_profile_delivered"]
LOCATION = "datahub_assets"  # workspace.yaml
REPOSITORY = "__repository__"  # the name Dagster gives a Definitions object


def range_batches(day: PreparedDay, key: str) -> range:
    keys = range_keys(day.contract.batch_ranges)
    return batch_slice(keys.index(key), len(keys), day.batches)


def range_ids(day: PreparedDay, key: str) -> list[str]:
    """The ids the range `key` must deliver, read from the snapshot independently of the run."""
    snapshot = DataLake(root=day.env["DATAHUB_DATA_DIR"]).snapshot_path(day.contract.dataset, day.day)
    return [json.loads(row)["id"] for batch in read_batches(snapshot, range_batches(day, key)) for row in batch.rows]


def ledger_entries(day: PreparedDay) -> dict[int, LedgerEntry]:
    """The ledger's batches of the prepared day (other dates reuse its ids, the ledger keeps dates apart)."""
    engine = create_delivery_engine(day.env["DATAHUB_DELIVERY_DB_URL"])
    try:
        return Ledger(engine).entries(day.contract.data_uuid, day.day)
    finally:
        engine.dispose()


def assert_delivered(day: PreparedDay, key: str) -> None:
    ids = range_ids(day, key)
    assert ids, f"range {key} has no rows: pick a non-empty range"
    reconciliation = day.stack.endpoint.reconcile(day.contract.data_uuid, ids)
    assert reconciliation["missing"] == 0, reconciliation
    entries = ledger_entries(day)
    assert {n: entries[n].status for n in range_batches(day, key) if n in entries} == {
        n: BatchStatus.SUCCESS for n in range_batches(day, key)
    }


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


def show_dataset_graph(page, webserver: Webserver) -> None:  # noqa: ANN001
    """The global lineage page, filtered to the dataset's group with the selection syntax."""
    page.goto(f"{webserver.url}/asset-groups")
    page.get_by_role("textbox", name="Search and filter assets").focus()
    page.keyboard.type("group:user_profile")
    page.keyboard.press("Enter")


def test_lineage_extract_snapshot_uploaded_delivered_is_drawn(webserver: Webserver, page):  # noqa: ANN001
    show_dataset_graph(page, webserver)
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


# Per canvas, what its last full redraw drew, in canvas pixels: every text with where it
# starts along x (Chart.js draws the axes' labels, so the dates along x) and the centre of
# every full circle (the data points; Chart.js draws none for a missing value).
# Installed before the page's own scripts; it only watches, every call goes through.
CANVAS_RECORDER = """
(() => {
  const proto = CanvasRenderingContext2D.prototype;
  const { clearRect, fillText, arc } = proto;
  const fresh = () => ({ texts: [], points: [] });
  const drawn = (ctx) => (ctx.canvas.__drawn ??= fresh());
  const onCanvas = (ctx, x, y) => {
    const m = ctx.getTransform();
    return [m.a * x + m.c * y + m.e, m.b * x + m.d * y + m.f];
  };
  proto.clearRect = function (x, y, w, h) {
    if (x <= 0 && y <= 0 && w >= this.canvas.width && h >= this.canvas.height) this.canvas.__drawn = fresh();
    return clearRect.apply(this, arguments);
  };
  proto.fillText = function (text, x, y) {
    drawn(this).texts.push({ text: String(text), x: onCanvas(this, x, y)[0] });
    return fillText.apply(this, arguments);
  };
  proto.arc = function (x, y, radius, start, end) {
    if (start === 0 && Math.abs(end - 2 * Math.PI) < 1e-9) drawn(this).points.push(onCanvas(this, x, y));
    return arc.apply(this, arguments);
  };
})();
"""
PLOTTED_KEYS = ["rows_expected", "batches_acknowledged_S", "slack_at_completion_s"]
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def plot_drawing(page, key: str) -> dict:  # noqa: ANN001
    """What the plot of the metadata key `key` drew last: {"texts": [{"text", "x"}], "points": [[x, y]]}."""
    canvas = page.get_by_text(key, exact=True).locator("xpath=ancestor::div[.//canvas][1]//canvas")
    return canvas.evaluate("c => c.__drawn ?? {texts: [], points: []}")


def dates_along_x(drawing: dict) -> list[str]:
    return [t["text"] for t in drawing["texts"] if DATE.fullmatch(t["text"])]


def dates_with_a_point(drawing: dict) -> list[str]:
    """The dates along x that a point stands over (the date label nearest to each point)."""
    labels = [(t["x"], t["text"]) for t in drawing["texts"] if DATE.fullmatch(t["text"])]
    return sorted(min(labels, key=lambda label: abs(label[0] - x))[1] for x, _ in drawing["points"])


def proved_dates(day: PreparedDay) -> list[str]:
    """The dates with a proof of delivery, as the instance records them."""
    with dg.DagsterInstance.from_config(day.env["DAGSTER_HOME"]) as instance:
        return sorted(instance.get_materialized_partitions(dg.AssetKey("user_profile_delivered")))


def test_the_proofs_plots_show_a_point_per_delivered_date(prepared_day: PreparedDay, webserver: Webserver, page):  # noqa: ANN001
    proved = proved_dates(prepared_day)
    # The three earlier dates, and the business date if the backfill test ran first.
    delivered = prepared_day.earlier_days
    assert len(delivered) == 3 and set(delivered) <= set(proved) <= {*delivered, prepared_day.day}
    page.add_init_script(CANVAS_RECORDER)
    page.goto(f"{webserver.url}/assets/user_profile_delivered")
    page.get_by_role("button", name="Plots").click()  # the metadata plotted by partition: by date

    page.get_by_text(PLOTTED_KEYS[-1], exact=True).wait_for()
    drawings: dict[str, dict] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        drawings = {key: plot_drawing(page, key) for key in PLOTTED_KEYS}
        if all(dates_with_a_point(d) == proved for d in drawings.values()):
            break
        time.sleep(0.5)
    screenshot(page, "ui-proof-plots")
    page.get_by_text(PLOTTED_KEYS[-1], exact=True).scroll_into_view_if_needed()
    screenshot(page, "ui-proof-plots-slack")

    for key, drawing in drawings.items():
        # The proved dates along x, in order, among the asset's dates; a point over each
        # proved date, one each, and none over a date without a proof.
        along_x = dates_along_x(drawing)
        assert along_x == sorted(along_x) and set(proved) <= set(along_x) <= {*delivered, prepared_day.day}, (key, drawing)
        assert dates_with_a_point(drawing) == proved, (key, drawing)
    # Each point is its own date's value: the rows rise from date to date (ui_fixtures'
    # EARLIER_ROWS, then the business date's ROWS), so left to right the points climb
    # (y grows downward).
    points = sorted(drawings["rows_expected"]["points"])
    heights = [y for _, y in points]
    assert heights == sorted(heights, reverse=True) and len(set(heights)) == len(heights), points


UPLOADED = dg.AssetKey("user_profile_uploaded")
DELIVERED = dg.AssetKey("user_profile_delivered")


def test_one_action_in_the_ui_delivers_every_range_of_a_date(
    prepared_day: PreparedDay, webserver: Webserver, daemon: Daemon, page  # noqa: ANN001
):
    """README, "Delivering one date": the dataset's graph, Materialize all, the date, launch."""
    day, keys = prepared_day.day, range_keys(prepared_day.contract.batch_ranges)
    show_dataset_graph(page, webserver)
    page.get_by_role("button", name="Materialize all…").click()
    dialog = page.get_by_role("dialog").first
    dialog.get_by_text("user_profile_extract", exact=True).wait_for()  # the dates offered are the root's
    dates = dialog.get_by_role("textbox")
    dates.fill(day)
    dates.press("Tab")
    launch = dialog.get_by_role("button", name="Launch backfill")
    launch.wait_for()
    screenshot(page, "ui-backfill-dialog")
    launch.click()
    page.get_by_role("link", name="View", exact=True).click()  # on the toast "Created backfill <id>"
    page.wait_for_url(re.compile(r"/runs/b/\w+"))
    backfill_id = re.search(r"/runs/b/(\w+)", page.url).group(1)

    assert wait_for_backfill(webserver, daemon, backfill_id) == "COMPLETED_SUCCESS", daemon.log_tail()

    with dg.DagsterInstance.from_config(prepared_day.env["DAGSTER_HOME"]) as instance:
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}, [(r.run_id, r.status) for r in runs]
        by_range = sorted(r.tags[f"dagster/partition/{RANGE_DIM}"] for r in runs if f"dagster/partition/{RANGE_DIM}" in r.tags)
        assert by_range == keys  # one run per range
        backfill_runs = {r.run_id for r in runs}
        uploads = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=UPLOADED, asset_partitions=[str(upload_partition_key(day, k)) for k in keys]),
            limit=100,
        ).records
        assert {u.partition_key for u in uploads if u.run_id in backfill_runs} == {f"{day}|{k}" for k in keys}
        (proof,) = [
            p for p in instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=DELIVERED, asset_partitions=[day]), limit=100).records
            if p.run_id in backfill_runs
        ]
        proof_metadata = {k: v.value for k, v in proof.asset_materialization.metadata.items()}
    assert proof_metadata["batches_expected"] == proof_metadata["batches_acknowledged_S"] == prepared_day.batches
    entries = ledger_entries(prepared_day)
    assert {n: e.status for n, e in entries.items()} == {n: BatchStatus.SUCCESS for n in range(prepared_day.batches)}

    # The backfill's page, as the toast's link opened it: succeeded, every range of the date.
    page.reload()
    uploaded_row = page.locator("[class*=VirtualizedTable_row]").filter(has=page.locator('a[href="/assets/user_profile_uploaded"]'))
    uploaded_row.wait_for()
    targeted, in_progress, succeeded, failed = (int(n) for n in uploaded_row.inner_text().split()[-4:])
    assert (targeted, in_progress, succeeded, failed) == (len(keys), 0, len(keys), 0), uploaded_row.inner_text()
    status = page.get_by_text("Status", exact=True).locator("xpath=..")
    assert status.inner_text().split() == ["Status", "Succeeded"], status.inner_text()
    screenshot(page, "ui-backfill-succeeded")
