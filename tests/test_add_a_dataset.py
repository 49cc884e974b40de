"""docs/add-a-dataset.md, followed literally: each file the page shows is written where it
says, and every `bash` block runs, in page order, in one shell. It runs in a scratch copy
of the product (datahub_assets/), so that the new contract does not land in this
checkout. The shell's environment is the page's "Before you start": the real local
endpoint, the stand-in SDK jar, a PostgreSQL source database, a Dagster instance, and
keys registered for the demo contract only. Then the endpoint reconciles the 5,000
order ids of the page's table: all stored, none missing, none unexpected."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import polars as pl
import sqlalchemy as sa

from datahub_assets.contract import PartnerType, load_contract
from datahub_assets.resources import resource_environment
from datahub_assets.sql import create_engine
from datahub_dev.stack import LOCAL_INSTANCE_YAML

REPO_ROOT = Path(__file__).resolve().parents[1]
HOWTO = REPO_ROOT / "docs" / "add-a-dataset.md"
# A fenced block: its language, an optional `file=PATH`, and its text.
FENCE = re.compile(r"^```(\w+)(?: file=(\S+))?[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)


def howto_blocks() -> list[tuple[str, str | None, str]]:
    """(language, file or None, text) of every fenced block of the page, in order."""
    return [(m[1], m[2], m[3]) for m in FENCE.finditer(HOWTO.read_text())]


def new_contract_path() -> str:
    (path,) = [f for lang, f, _ in howto_blocks() if lang == "yaml" and f]
    return path


def test_the_page_adds_a_contract_with_bigint_and_double_columns_read_from_postgres(tmp_path):
    blocks = howto_blocks()
    assert [lang for lang, _, _ in blocks].count("bash") >= 4
    path = tmp_path / "contract.yaml"
    (text,) = [t for lang, f, t in blocks if f == new_contract_path()]
    path.write_text(text)
    contract = load_contract(path)  # the page's contract is valid as written
    assert {PartnerType.BIGINT, PartnerType.DOUBLE} <= {c.type for c in contract.columns}
    assert contract.source.kind == "table"
    assert any("generate_series(1, 5000)" in t for lang, _, t in blocks if lang == "bash")


def test_following_the_page_delivers_the_new_dataset(tmp_path, pg_url, datahub_endpoint, sdk_jar, keys_file):
    project = tmp_path / "project"
    shutil.copytree(REPO_ROOT / "datahub_assets", project / "datahub_assets", ignore=shutil.ignore_patterns("__pycache__"))
    (project / ".venv").symlink_to(REPO_ROOT / ".venv")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(LOCAL_INSTANCE_YAML, home / "dagster.yaml")
    env = {
        **os.environ,
        "PYTHONPATH": str(project),  # the scratch copy, with the page's contract, is what runs
        "DAGSTER_HOME": str(home),
        **resource_environment(
            {
                "lake": {"root": tmp_path / "lake"},
                "source_db": {"url": pg_url},
                "landing": {"url": tmp_path / "landing"},
                "sdk": {"classpath": sdk_jar, "keys_path": keys_file},
                "delivery_db": {"url": f"sqlite:///{tmp_path / 'delivery.db'}"},
            }
        ),
        "ADMIN_TOKEN_FILE": str(datahub_endpoint.admin_token_file),
    }

    script = ["set -euo pipefail"]
    for lang, file, text in howto_blocks():
        if file:
            (project / file).parent.mkdir(parents=True, exist_ok=True)
            (project / file).write_text(text)
        elif lang == "bash":
            script.append(text)
    shell = subprocess.run(
        ["bash", "-c", "\n".join(script)], cwd=project, env=env, capture_output=True, text=True, timeout=900
    )
    assert shell.returncode == 0, f"{shell.stdout[-3000:]}\n{shell.stderr[-5000:]}"

    contract = load_contract(project / new_contract_path())
    assert shell.stdout.strip().splitlines()[-1] == "5000 rows stored"
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            day, ids = None, []
            for order_id, business_date in conn.execute(sa.text("SELECT order_id, business_date FROM order_totals")):
                ids.append(order_id)
                day = business_date.isoformat()
    finally:
        engine.dispose()
    assert len(ids) == 5000
    reconciled = datahub_endpoint.reconcile(contract.data_uuid, ids)
    assert (reconciled["stored"], reconciled["missing"], reconciled["unexpected"]) == (5000, 0, 0)

    # The values the page promises: a whole double leaves as "2.0", a Bigint as digits.
    snapshot = pl.read_parquet(tmp_path / "lake" / contract.dataset / "snapshot" / f"{day}.parquet")
    row = snapshot.filter(pl.col("id") == "ord-000008").row(0, named=True)
    assert (row["amount"], row["itemCount"], row["merchantId"]) == ("2.0", "2", "m-8")

    # The page's last promise: the command ends with the proof of delivery, one line per batch.
    proof = tmp_path / "lake" / contract.dataset / "proof" / f"{day}.csv"
    batch_numbers = [line.split(",")[0] for line in proof.read_text().splitlines()[1:]]
    assert batch_numbers == [str(n) for n in range(50)]
