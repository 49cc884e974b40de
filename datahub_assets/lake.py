"""Where each stage's files live, one folder per dataset; private to the user that runs
the steps. Extracts, snapshots and quarantines are kept for the contract's
`retention_days`; proofs of delivery (batch numbers, traceIds and content hashes, no row
value) are kept like the ledger they come from."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import stat
from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

DIR_MODE = 0o700
FILE_MODE = 0o600
# What a step creates while the lake is set up: no group or other bits.
LAKE_UMASK = 0o077
STAGES = ("extract", "snapshot", "quarantine")
_DAY = re.compile(r"^(\d{4}-\d{2}-\d{2})(\.parquet)?$")


class DataLake(dg.ConfigurableResource):
    """The local (or mounted) folder holding extracts, snapshots, quarantines and proofs.

    The files hold the wallet's rows in clear text, so only the user that runs the steps
    may read them: folders 0700, files 0600. Polars and the extract code create them
    directly, so while the resource is set up the process umask is 0o077 (a step process
    writes only lake files and its logs, which are no less private; the previous umask
    is restored at teardown), and the folders already there are made 0700.
    `secure(path)` sets the modes of everything under a path.
    """

    root: str

    _saved_umask = PrivateAttr(default=None)

    def extract_dir(self, dataset: str, day: str) -> Path:
        return Path(self.root) / dataset / "extract" / day

    def snapshot_path(self, dataset: str, day: str) -> Path:
        return Path(self.root) / dataset / "snapshot" / f"{day}.parquet"

    def quarantine_path(self, dataset: str, day: str) -> Path:
        return Path(self.root) / dataset / "quarantine" / f"{day}.parquet"

    def proof_path(self, dataset: str, day: str) -> Path:
        return Path(self.root) / dataset / "proof" / f"{day}.csv"

    # --- permissions ----------------------------------------------------------------------

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._saved_umask = os.umask(LAKE_UMASK)
        root = Path(self.root)
        root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        # The root and its dataset and stage folders: a 0700 folder already closes
        # everything under it to other users, so the files below are not walked here.
        for folder in (root, *root.glob("*"), *root.glob("*/*")):
            if folder.is_dir() and not folder.is_symlink():
                _chmod(folder)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._saved_umask is not None:
            os.umask(self._saved_umask)
            self._saved_umask = None

    def secure(self, path: str | Path) -> None:
        """Folders 0700 and files 0600, for `path` and everything under it. Symlinks are
        neither followed nor changed."""
        path = Path(path)
        _chmod(path)
        if path.is_dir() and not path.is_symlink():
            for folder, dirs, files in os.walk(path):
                for name in (*dirs, *files):
                    _chmod(Path(folder) / name)

    # --- retention ------------------------------------------------------------------------

    def delete_older_than(self, dataset: str, today: str | dt.date, keep_days: int) -> list[Path]:
        """Remove the dataset's extracts, snapshots and quarantines of dates before
        `today - keep_days` (the contract's `retention_days`); return what was removed.
        Nothing with 0 days, and nothing whose name is not a date."""
        if keep_days < 0:
            raise ValueError("keep_days must be 0 (keep forever) or more")
        if keep_days == 0:
            return []
        today = dt.date.fromisoformat(today) if isinstance(today, str) else today
        cutoff = (today - dt.timedelta(days=keep_days)).isoformat()
        removed = []
        for stage in STAGES:
            folder = Path(self.root) / dataset / stage
            if not folder.is_dir():
                continue
            for entry in sorted(folder.iterdir()):
                match = _DAY.match(entry.name)
                if not match or match.group(1) >= cutoff or not _is_date(match.group(1)):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry)
        return removed


def _is_date(text: str) -> bool:
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _chmod(path: Path) -> None:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        return
    wanted = DIR_MODE if stat.S_ISDIR(st.st_mode) else FILE_MODE
    if stat.S_IMODE(st.st_mode) != wanted:
        os.chmod(path, wanted)
