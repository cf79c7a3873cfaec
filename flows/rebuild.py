"""The nightly rebuild: retrain (or reuse the latest model), build a new version, validate it,
swap the alias, apply retention; never leave serving broken.

Before the swap, any failure drops the candidate and leaves the alias untouched. The swap
and the check after it run in a Prefect transaction: if the check fails, the swap's
rollback hook points the alias back at the version it served before. A lock per alias in
TOWERBRIDGE_HOME keeps two rebuilds from interleaving (the deployment also has a
concurrency limit of 1). Each rebuild writes rebuild.json and rebuild.md (and, when it
fails, the error) to TOWERBRIDGE_HOME/rebuilds/<flow run id>/ and publishes the Markdown
as a Prefect artifact.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.logging.loggers import flow_run_logger
from prefect.runtime import flow_run as current_run
from prefect.schedules import Cron
from prefect.tasks import exponential_backoff
from prefect.transactions import get_transaction, transaction

from towerbridge import defaults, settings, steps
from towerbridge import rebuild as decide
from towerbridge.data.options import DataOptions
from towerbridge.data.prepare import read_summary
from towerbridge.errors import ConfigError, MilvusUnavailable, RebuildRejected
from towerbridge.flows.embed import embedded
from towerbridge.flows.evaluate import evaluate
from towerbridge.flows.train import prepare_data, train
from towerbridge.milvus import server
from towerbridge.milvus.schema import DEFAULT_ALIAS
from towerbridge.milvus.store import ItemStore
from towerbridge.options import RebuildOptions, TrainOptions
from towerbridge.results import BuiltVersion, Comparison
from towerbridge.towers import artifact
from towerbridge.towers.distributed import read_catalog

TRANSIENT = (MilvusUnavailable, ConnectionError, TimeoutError, OSError)


def _transient(task, task_run, state) -> bool:
    """Retry only what a retry can fix: an unreachable server, I/O; never bad input."""
    return isinstance(state.result(raise_on_failure=False), TRANSIENT)


RETRY = {"retries": defaults.REBUILD_RETRIES, "retry_delay_seconds": exponential_backoff(backoff_factor=5),
         "retry_condition_fn": _transient}


@task(name="inspect-serving", **RETRY, timeout_seconds=300)
def inspect_serving(uri: str, alias: str) -> decide.Serving:
    with ItemStore(uri) as store:
        return decide.find_serving(store, alias)


@task(name="build-candidate", **RETRY, timeout_seconds=4 * 3600)
def build_candidate(model_dir: str, uri: str, alias: str, index_params: dict, target_recall: float,
                    vectors: list[str] | None = None) -> BuiltVersion:
    # a retry starts over: the failed attempt dropped its partial collection (or the next rebuild will)
    with ItemStore(uri) as store:
        return steps.build_version(store, model_dir, alias, index_params=index_params, target_recall=target_recall,
                                   complete=False, embedded=vectors)


@task(name="compare-with-serving", **RETRY, timeout_seconds=3600)
def compare_with_serving(model_dir: str, report_dir: str, uri: str, serving: str, metrics: tuple[str, ...],
                         confidence: float, margin: float) -> Comparison:
    return steps.compare_with_serving(model_dir, report_dir, uri, serving, metrics, confidence, margin)


@task(name="drop-candidate", **RETRY, timeout_seconds=300)
def drop_candidate(uri: str, alias: str, collection: str) -> bool:
    """Drop the candidate unless it is what the alias serves; True if dropped."""
    with ItemStore(uri) as store:
        if store.alias_target(alias) == collection:
            return False
        store.drop(collection)
        return True


# long enough to wait for the alias' catalog lock (an `items add` may hold it: serve_version
# waits up to 600 s) and apply the changes logged while the candidate was built
@task(name="swap-alias", **RETRY, timeout_seconds=1200)
def swap_alias(uri: str, alias: str, collection: str, comparison: Comparison, previous: str | None) -> None:
    """Record what the gate based its decision on (``comparison``), mark the validated
    ``collection`` complete and point ``alias`` at it. ``previous``: what the alias served when
    the rebuild began (the rebuild holds the alias' lock, so nothing else moved it), kept for the
    rollback; passed in, not read here, so that a retry after a swap that did happen but
    reported an error does not take the candidate for the version to restore."""
    with ItemStore(uri) as store:
        get_transaction().set("restore", {"uri": uri, "alias": alias, "previous": previous})
        store.set_record(collection, gate=comparison)
        store.mark_complete(collection)
        # the catalog changes logged while the candidate was built are applied to it as it serves
        steps.serve_version(store, alias, collection)


@swap_alias.on_rollback
def _restore_alias(txn) -> None:
    """Put the alias back on the version it served before the swap (or remove it, if it is new)."""
    restore = txn.get("restore")
    with ItemStore(restore["uri"]) as store:
        if restore["previous"]:  # with the catalog changes it missed while it did not serve
            steps.serve_version(store, restore["alias"], restore["previous"])
        else:
            store.drop_alias(restore["alias"])


@task(name="verify-serving", **RETRY, timeout_seconds=300)
def verify_serving(uri: str, alias: str, collection: str, model_dir: str, k: int = 10) -> None:
    """After the swap, the alias must answer as the candidate: it resolves to it, and a search
    through the alias for real users returns k items each."""
    with ItemStore(uri) as store:
        target = store.alias_target(alias)
        if target != collection:
            raise RuntimeError(f"after the swap, alias {alias} serves {target}, not {collection}")
        trained = artifact.load(Path(model_dir))
        users = np.sort(np.random.default_rng(0).permutation(trained.user_ids)[:16])
        train_part = steps.read_part(artifact.read_manifest(Path(model_dir)).prepared_dir, "train")
        ids, scores = store.search(alias, steps.user_queries(trained, users, train_part), k,
                                   store.record(collection).search_params())
        short = int((~np.isfinite(scores)).any(axis=1).sum())
        if short:
            raise RuntimeError(f"alias {alias}: {short} of {len(users)} test searches returned fewer than {k} items")
        store.set_record(collection, served_since=defaults.utc_now())


@task(name="apply-retention", **RETRY, timeout_seconds=600)
def apply_retention(uri: str, alias: str, keep_versions: int) -> list[str]:
    with ItemStore(uri) as store:
        return store.apply_retention(alias, keep_versions)


def rebuild_dir() -> Path:
    return settings.state_dir("rebuilds") / str(current_run.id or settings.new_id())


def _alias_of(parameters: dict) -> str:
    """The alias a rebuild run was given: its options as the object, or as JSON (a deployment's)."""
    options = parameters.get("options")
    if isinstance(options, RebuildOptions):
        return options.index.alias
    index = options.get("index") if isinstance(options, dict) else None
    return index.get("alias", DEFAULT_ALIAS) if isinstance(index, dict) else DEFAULT_ALIAS


def _record_failure(flow, flow_run, state) -> None:
    """on_failure: one clear line in the log naming the report (the flow itself writes
    rebuild.json and rebuild.md, with the error, however it ends)."""
    directory = settings.state_dir("rebuilds") / str(flow_run.id)
    summary_file = directory / "rebuild.md"
    message = state.message or "failed"
    flow_run_logger(flow_run, flow).error(
        "rebuild of %s FAILED; serving is unchanged unless the report says otherwise: %s (report: %s)",
        _alias_of(flow_run.parameters), message, summary_file if summary_file.exists() else directory)


@flow(name="rebuild", on_failure=[_record_failure], timeout_seconds=6 * 3600)
def rebuild(options: RebuildOptions = RebuildOptions()) -> decide.RebuildSummary:
    """Rebuild the collection behind ``options.index.alias`` from the latest data, and serve it
    only if it passes validation: every item indexed, index recall >= ``options.index.target_recall``,
    and, with the serving model ranking the same users, none of ``options.gate.metrics`` (default
    hit_rate@10, ndcg@10) worse with confidence: the ``options.gate.confidence`` interval of the
    mean per-user difference is not wholly below ``-options.gate.tolerance``.
    ``options.reuse_model``: skip training, re-index the latest trained model; otherwise the
    train flow trains one with ``options.train``.
    ``options.retries``: how often a Milvus task is retried (with backoff) after a transient failure.

    Returns the ``RebuildSummary`` (also in TOWERBRIDGE_HOME/rebuilds/<run id>/rebuild.json).
    Raises ``RebuildRejected`` when the candidate failed validation (serving unchanged).
    """
    logger = get_run_logger()
    alias, gate = options.index.alias, options.gate
    inspect, build, compare, swap, retain = (t.with_options(retries=options.retries) for t in (
        inspect_serving, build_candidate, compare_with_serving, swap_alias, apply_retention))
    # A failed check rolls the swap back at once, so retrying it could only fail again.
    verify = verify_serving.with_options(retries=0)
    directory = rebuild_dir()
    started = time.perf_counter()
    summary = decide.RebuildSummary(alias=alias, started_at=defaults.utc_now())
    try:
        with server.endpoint(options.milvus_uri, log=logger.info) as uri, \
                settings.lock(f"index-{alias}", timeout_s=options.lock_timeout_s, log=logger.info):
            serving = inspect(uri, alias)
            summary.serving_before = summary.serving_after = serving.collection
            summary.removed_half_built = list(serving.removed_half_built)
            if serving.missing_files:
                summary.serving_damaged = list(serving.missing_files)
                logger.warning("%s serves nothing: %d of its files are missing from the server's disk; this "
                               "rebuild replaces it", serving.collection, len(serving.missing_files))
            if options.reuse_model:
                model_dir = decide.latest_model()
                logger.info("reusing the latest model %s", model_dir)
                summary.training = "reused (--reuse-model)"
            else:
                model_dir = train_model(options, serving, summary, logger, directory)
            summary.model_dir = model_dir
            with embedded(model_dir, options.index) as vectors:
                summary.built = built = build(model_dir, uri, alias, options.index.index_params.overrides(),
                                              options.index.target_recall, vectors)
            try:
                report_dir = str(directory / "report")
                summary.report = evaluate(model_dir, built.collection, report_dir, options.evaluate, milvus_uri=uri)
                summary.comparison = comparison = decide.not_compared(serving, gate.confidence, gate.tolerance) \
                    or compare(model_dir, report_dir, uri, serving.collection, gate.metrics, gate.confidence,
                               gate.tolerance)
                summary.decision = decision = decide.validate(built, comparison, options.index.target_recall)
                if not decision.passed:
                    raise RebuildRejected(f"candidate {built.collection} rejected, "
                                          f"{serving.collection or 'nothing'} still serves: {decision.reason}")
                with transaction():
                    swap(uri, alias, built.collection, comparison, serving.collection)
                    verify(uri, alias, built.collection, model_dir)
            except BaseException:
                try:
                    summary.candidate_dropped = drop_candidate.with_options(retries=0)(uri, alias, built.collection)
                except Exception as error:  # e.g. Milvus is down: the next rebuild removes it as half-built
                    summary.warn(f"candidate {built.collection} not dropped ({error}); the next rebuild removes it")
                raise
            summary.serving_after, summary.outcome = built.collection, "swapped"
            try:
                summary.dropped_versions = retain(uri, alias, options.index.keep_versions)
            except Exception as error:  # the new version serves; old versions linger until the next rebuild
                summary.warn(f"retention failed, old versions kept: {error}")
    except BaseException as error:
        if isinstance(error, RebuildRejected):
            summary.outcome = "rejected"
        summary.error = "".join(traceback.format_exception_only(type(error), error)).strip()
        decide.attach(error, summary)
        raise
    finally:
        summary.seconds = round(time.perf_counter() - started, 1)
        summary.report_dir = str(directory)
        decide.write_summary(summary, directory)
        try:
            create_markdown_artifact(key=f"rebuild-{_artifact_key(alias)}", markdown=decide.markdown(summary),
                                     description=f"rebuild of {alias}: {summary.outcome}")
        except Exception as error:  # the files on disk are the record; the artifact is a convenience
            logger.warning("could not publish the rebuild artifact: %s", error)
    logger.info("rebuild of %s: %s now serves (%s)", alias, summary.serving_after, summary.decision.reason)
    return summary


def continual(options: RebuildOptions, serving: decide.Serving, summary: decide.RebuildSummary, logger,
              directory: Path) -> tuple[TrainOptions, TrainOptions | None]:
    """The train flow's options for this rebuild, and the from-scratch options to fall back on
    if the continued training is refused (None when it trains from scratch already).

    The data is prepared first (when not already), so that the serving model is continued
    only on the same dataset, id type, split and features (``decide.training_start``), for
    ``options.continual_epochs`` unless epochs are given and at most ``options.continual_budget``
    unless a budget is given; ``summary.training`` says which and why."""
    train_options = options.train
    if train_options.prepared_dir is None:
        prepared = prepare_data(train_options.data or DataOptions(), str(directory / "run" / "data"))
        train_options = train_options.model_copy(update={"data": None, "prepared_dir": prepared})
    data = read_summary(train_options.prepared_dir)
    config = train_options.tower_config(data["protocol"])
    features = None if options.from_scratch or serving.collection is None else \
        read_catalog(train_options.prepared_dir, config)[2].to_dict()
    start = decide.training_start(serving, config, options.from_scratch, data, features)
    summary.training = start.why
    logger.info("training %s", start.why)
    if start.parent_dir is None:
        return train_options, None
    return train_options.model_copy(update={
        "continue_from": start.parent_dir, "epochs": train_options.epochs or options.continual_epochs,
        "time_budget": train_options.time_budget or options.continual_budget,
        "replay": options.replay if options.replay is not None else train_options.replay}), train_options


def train_model(options: RebuildOptions, serving: decide.Serving, summary: decide.RebuildSummary, logger,
                directory: Path) -> str:
    """Train the candidate's model (``continual``); a continued training the model refuses
    (``ConfigError``: its weights are not this model's, e.g. after an upgrade) falls back to
    training from scratch, and the summary says so. Returns the model directory."""
    chosen, scratch = continual(options, serving, summary, logger, directory)
    try:
        model_dir = train(chosen, run_dir=str(directory / "run")).model_dir
    except ConfigError as error:
        if scratch is None or not str(error).startswith("cannot continue training from"):
            raise
        summary.training = f"from scratch: {str(error).removesuffix('; train from scratch instead')}"
        logger.warning("training %s", summary.training)
        model_dir = train(scratch, run_dir=str(directory / "run")).model_dir
    lineage = artifact.read_manifest(Path(model_dir)).lineage
    summary.lineage = lineage.to_dict() if lineage else None
    return model_dir


def _artifact_key(alias: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return "".join(c if c.isalnum() else "-" for c in alias.lower())


def nightly(cron: str = defaults.NIGHTLY_CRON, timezone: str = defaults.NIGHTLY_TIMEZONE,
            options: RebuildOptions | None = None, name: str = "nightly"):
    """The scheduled deployment of the rebuild: cron in an explicit timezone, one run at a time.
    Its one parameter is ``options`` as JSON, holding what differs from the defaults (the rest
    takes the defaults of the day it runs)."""
    return _scheduled(options or RebuildOptions(), cron, timezone, name, "nightly",
                      f"Nightly rebuild of the item collection ({cron}, {timezone}).")


def full_retrain(cron: str = defaults.FULL_RETRAIN_CRON, timezone: str = defaults.NIGHTLY_TIMEZONE,
                 options: RebuildOptions | None = None, name: str = "full-retrain"):
    """The slower schedule beside ``nightly``: the same rebuild, trained from scratch
    (``from_scratch``; ``reuse_model`` off), so that a chain of continued models restarts from
    random weights now and then. Its runs wait for a nightly one of the same alias to finish
    (the alias' lock, ``options.lock_timeout_s``)."""
    options = (options or RebuildOptions()).model_copy(update={"from_scratch": True, "reuse_model": False})
    return _scheduled(options, cron, timezone, name, "full-retrain",
                      f"Rebuild of the item collection with a model trained from scratch ({cron}, {timezone}).")


def _scheduled(options: RebuildOptions, cron: str, timezone: str, name: str, tag: str, description: str):
    chosen = options.model_dump(mode="json", exclude_defaults=True)
    return rebuild.to_deployment(name=name, schedule=Cron(cron, timezone=timezone), concurrency_limit=1,
                                 parameters={"options": chosen}, tags=["towerbridge", tag], description=description)
