"""The catalog flow: items added and retired in the serving version between rebuilds
(``towerbridge.catalog``), on demand or every few minutes from an inbox directory."""

from __future__ import annotations

import shutil
import time
from datetime import timedelta
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task

from towerbridge import steps
from towerbridge.errors import ConfigError, DataError
from towerbridge.milvus import server
from towerbridge.options import CatalogOptions

RETRY = {"retries": 2, "retry_delay_seconds": [5, 30]}
# a file in the inbox is read once its writer has left it alone this long
SETTLED_S = 2.0


def read_table(path: Path) -> pd.DataFrame:
    """A Parquet or CSV file as a table (DataError naming the file when it cannot be read)."""
    try:
        if path.suffix.lower() in (".csv", ".txt"):  # ids as written; integer ids are converted when checked
            return pd.read_csv(path, dtype={"item_id": str})
        return pd.read_parquet(path)
    except (OSError, ValueError) as error:
        raise DataError(f"{path.name}: cannot read it ({str(error).splitlines()[0][:200]})") from None


def read_ids(path: Path) -> list:
    """Item ids from a file: an ``item_id`` column (Parquet, CSV), or one id per line (.txt)."""
    if path.suffix.lower() == ".txt":
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    table = read_table(path)
    if "item_id" not in table.columns:
        raise DataError(f"{path.name}: no item_id column (columns: {', '.join(map(str, table.columns))})")
    return table["item_id"].tolist()


@task(name="add-items", **RETRY, retry_condition_fn=lambda task, run, state: _transient(state))
def add_items(uri: str, alias: str, path: str) -> steps.CatalogUpdate:
    return steps.add_items(uri, alias, read_table(Path(path)))


@task(name="retire-items", **RETRY, retry_condition_fn=lambda task, run, state: _transient(state))
def retire_items(uri: str, alias: str, ids: list | None = None, expression: str | None = None) -> steps.CatalogUpdate:
    return steps.retire_items(uri, alias, ids=ids, expression=expression)


def _transient(state) -> bool:
    """Retry what Milvus might answer next time, not items it will refuse again."""
    try:
        state.result()
    except (DataError, ConfigError):
        return False
    except Exception:  # noqa: BLE001 - any other failure (Milvus unavailable, ...) is worth a retry
        return True
    return False


def inbox_files(inbox: Path) -> list[tuple[str, Path]]:
    """The files waiting in ``inbox/add`` and ``inbox/retire``, oldest first, settled ones only
    (a file still being written is left for the next run)."""
    now = time.time()
    waiting = [(kind, path) for kind in ("add", "retire") if (inbox / kind).is_dir()
               for path in (inbox / kind).iterdir()
               if path.is_file() and not path.name.startswith(".") and now - path.stat().st_mtime >= SETTLED_S]
    return sorted(waiting, key=lambda entry: (entry[1].stat().st_mtime, entry[1].name))


def _file_away(path: Path, inbox: Path, where: str, note: str | None = None) -> Path:
    target = inbox / where / f"{time.strftime('%Y%m%dT%H%M%S')}-{path.name}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), target)
    if note is not None:
        target.with_name(target.name + ".error.txt").write_text(note + "\n")
    return target


@flow(name="catalog")
def catalog(options: CatalogOptions) -> list[steps.CatalogUpdate]:
    """Apply catalog changes to the version serving ``options.alias``: ``options.add`` (an items
    file), ``options.retire_ids`` or ``options.retire_filter``, then every settled file in
    ``options.inbox`` (add/ and retire/, oldest first). Each inbox file moves to done/ once
    applied, or to failed/ beside a note saying why (items the model cannot read, unknown ids);
    the others are still applied, and the run fails at the end naming the failed files."""
    logger = get_run_logger()
    updates: list[steps.CatalogUpdate] = []
    failed: list[str] = []
    with server.endpoint(options.milvus_uri, log=logger.info) as uri:
        if options.add:
            updates.append(add_items(uri, options.alias, options.add))
        if options.retire_ids is not None or options.retire_filter is not None:
            updates.append(retire_items(uri, options.alias, ids=options.retire_ids, expression=options.retire_filter))
        inbox = Path(options.inbox) if options.inbox else None
        for kind, path in inbox_files(inbox) if inbox else []:
            try:
                update = add_items(uri, options.alias, str(path)) if kind == "add" else \
                    retire_items(uri, options.alias, ids=read_ids(path))
            except (DataError, ConfigError) as error:  # the file's fault; anything else stops the run
                _file_away(path, inbox, "failed", str(error))
                failed.append(f"{kind}/{path.name}: {error}")
                logger.error("%s/%s: %s (moved to failed/)", kind, path.name, error)
                continue
            _file_away(path, inbox, "done")
            updates.append(update)
    for update in updates:
        logger.info("%s", update.describe())
    if failed:
        raise DataError(f"{len(failed)} inbox file(s) could not be applied (moved to failed/, each with a note): "
                        + "; ".join(failed))
    return updates


def every(minutes: float = 15.0, options: CatalogOptions | None = None, name: str = "changes"):
    """The catalog flow as a deployment run every ``minutes``, one run at a time, on the inbox
    (and the other changes) that ``options`` names."""
    chosen = options.model_dump(mode="json", exclude_defaults=True) if options else {}
    return catalog.to_deployment(name=name, interval=timedelta(minutes=minutes), concurrency_limit=1,
                                 parameters={"options": chosen}, tags=["towerbridge", "catalog"],
                                 description=f"Catalog changes from the inbox, every {minutes:g} minutes.")
