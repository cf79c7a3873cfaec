"""The nightly rebuild fired by its schedule, end to end, by both routes an operator has:

- ``serve``: `towerbridge serve`, which registers rebuild/nightly and runs it in its own process;
- ``pool``: the repository's prefect.yaml, `prefect deploy`-ed into a process work pool and
  run by `prefect worker start`.

Each route gets a real `prefect server start` of its own (both register the same deployment,
rebuild/nightly, so on one server the second would replace the first), a per-minute cron set
from the command line, and the embedded Milvus of the session. Both routes are set up
before either run is waited for, so their waits for the next minute overlap. A route's
runner or worker is stopped as soon as its first scheduled run finishes, so the next
minute's run cannot move the alias while the tests read it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import train_synthetic
from towerbridge import defaults, settings
from towerbridge.milvus.store import ItemStore

if TYPE_CHECKING:
    from uuid import UUID

    from prefect.client.schemas.objects import Artifact, FlowRun, State
    from prefect.client.schemas.responses import DeploymentResponse

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EVERY_MINUTE = "* * * * *"
FULL_CRON = "0 4 1 1 *"  # the serve route's full retrain: registered, never due while the test runs
POOL = "towerbridge-test"
ALIASES = {"serve": "scheduled_serve_test", "pool": "scheduled_pool_test"}
SERVER_START_S = 180
# the next minute, then a rebuild (index, evaluate, swap) while the suite's other workers compete for the cores
FIRST_RUN_S = 60 + 300
FINISHED = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


@dataclass
class Process:
    """A command started in a session of its own, its output in a file."""

    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, chars: int = 4000) -> str:
        text = self.log.read_text(errors="replace")
        return f"--- last output of {self.name} (exit code {self.popen.poll()}) ---\n{text[-chars:]}"


def start(name: str, command: list, env: dict, directory: Path) -> Process:
    log = directory / f"{name}.log"
    with log.open("wb") as output:
        popen = subprocess.Popen([str(part) for part in command], stdout=output, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env, cwd=REPO, start_new_session=True)
    return Process(name, popen, log)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``. Prefect starts each flow run in a session of its own, so
    killing the runner's or worker's process group would leave the run behind."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def stop(processes: list[Process]) -> None:
    """SIGKILL every process group the commands started, flow runs included."""
    groups = set()
    for pid in [pid for process in processes for pid in (process.popen.pid, *descendants(process.popen.pid))]:
        with contextlib.suppress(ProcessLookupError):
            groups.add(os.getpgid(pid))
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    for process in processes:
        process.popen.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Route:
    """One route to a scheduled rebuild: its Prefect server, its environment, the commands
    that run its deployment (``runners``)."""

    name: str
    directory: Path
    env: dict
    server: Process
    runners: list[Process] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return self.env["PREFECT_API_URL"]

    @property
    def database(self) -> Path:
        return Path(self.env["PREFECT_HOME"]) / "prefect.db"

    @property
    def processes(self) -> list[Process]:
        return [self.server, *self.runners]

    def tails(self) -> str:
        return "\n".join(process.tail() for process in self.processes)

    def start_runner(self, name: str, command: list) -> None:
        """Start a command that runs the deployment's runs (``towerbridge serve``, a worker)."""
        self.runners.append(start(name, command, self.env, self.directory))

    def prefect(self, *args: str) -> None:
        """A `prefect` command against this route's server, from the repository root."""
        done = subprocess.run([str(BIN / "prefect"), *args], capture_output=True, text=True, env=self.env,
                              cwd=REPO, timeout=180)
        assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{(done.stdout + done.stderr)[-4000:]}"


def start_route(name: str, root: Path, database: Path | None = None) -> Route:
    """Start the route's Prefect server; from a copy of ``database`` when given, which saves
    the migration of a new one (most of a server's start-up)."""
    directory = root / name
    home = directory / "prefect-home"
    home.mkdir(parents=True)
    if database:
        with contextlib.closing(sqlite3.connect(database)) as source, \
                contextlib.closing(sqlite3.connect(home / "prefect.db")) as copy:
            source.backup(copy)  # consistent while the other server writes to it
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        # a new deployment gets its scheduled runs within a second (default: 5 s)
        "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "1",
        # the runner and the worker ask for due runs every second (default: 10 s); they fetch
        # runs due within 10 s (the runner's fixed prefetch) or 30 s (the worker's), so a
        # run's process starts and imports torch before its minute comes
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "30",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "PYTHONUNBUFFERED": "1",
    }
    server = start("prefect server", [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", port,
                                      "--no-ui"], env, directory)
    return Route(name, directory, env, server)


def wait_healthy(route: Route) -> None:
    deadline, server = time.monotonic() + SERVER_START_S, route.server
    while True:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{route.api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        assert server.popen.poll() is None, f"the {route.name} route's Prefect server exited\n{route.tails()}"
        assert time.monotonic() < deadline, (f"the {route.name} route's Prefect server did not answer "
                                             f"{route.api_url}/health within {SERVER_START_S} s\n{route.tails()}")
        time.sleep(0.5)


@dataclass
class Outcome:
    """A route's first scheduled run, as the Prefect server and Milvus report it once it finished."""

    deployment: DeploymentResponse
    run: FlowRun
    states: list[State]
    artifacts: list[Artifact]
    serving: str | None
    summary: dict
    full_retrain: DeploymentResponse | None = None  # rebuild/full-retrain, where the route registered it


def first_finished_run(route: Route) -> tuple[DeploymentResponse | None, FlowRun | None]:
    """The deployment and its earliest finished run, or (deployment or None, None)."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.exceptions import ObjectNotFound

    with SyncPrefectClient(route.api_url) as client:
        try:
            deployment = client.read_deployment_by_name("rebuild/nightly")
        except ObjectNotFound:
            return None, None
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=FINISHED))),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=1)
        return deployment, (runs[0] if runs else None)


def outcome_of(route: Route, deployment: DeploymentResponse, run: FlowRun, milvus_uri: str) -> Outcome:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.exceptions import ObjectNotFound

    with SyncPrefectClient(route.api_url) as client:
        states = sorted(client.read_flow_run_states(run.id), key=lambda state: state.timestamp)
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[run.id])))
        try:
            full_retrain = client.read_deployment_by_name("rebuild/full-retrain")
        except ObjectNotFound:
            full_retrain = None
    with ItemStore(milvus_uri) as store:
        serving = store.alias_target(ALIASES[route.name])
    summary_file = settings.state_dir("rebuilds") / str(run.id) / "rebuild.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    return Outcome(deployment, run, states, artifacts, serving, summary, full_retrain)


def wait_for_first_runs(routes: dict[str, Route], milvus_uri: str) -> dict[str, Outcome | str]:
    """Each route's first scheduled run once it finished (its runner or worker then stopped),
    or why there is none."""
    deadline, found, deployments = time.monotonic() + FIRST_RUN_S, {}, {}
    while len(found) < len(routes):
        for name, route in routes.items():
            if name in found:
                continue
            if exited := [process.name for process in route.processes if process.popen.poll() is not None]:
                found[name] = f"the {name} route's {', '.join(exited)} exited before a run finished\n{route.tails()}"
                continue
            deployments[name], run = first_finished_run(route)
            if run is not None:
                stop(route.runners)  # before the next minute's run can start
                found[name] = outcome_of(route, deployments[name], run, milvus_uri)
        if time.monotonic() > deadline:
            for name, route in routes.items():
                if name not in found:
                    what = ("no scheduled run of rebuild/nightly finished" if deployments.get(name)
                            else "rebuild/nightly was never registered")
                    found[name] = f"the {name} route: {what} within {FIRST_RUN_S} s\n{route.tails()}"
        time.sleep(1)
    return found


@pytest.fixture(scope="module")
def scheduled(milvus_uri, tmp_path_factory):
    """Both routes started, then their first scheduled runs, once finished: {"serve": Outcome or
    why it failed, "pool": the same, "model_dir": the model they reuse}. The model is trained
    here, small, in a TOWERBRIDGE_HOME of this module's own, so `--reuse-model` finds it whatever
    other modules trained."""
    root = tmp_path_factory.mktemp("scheduled")
    home = root / "towerbridge-home"
    home.mkdir()
    routes: dict[str, Route] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TOWERBRIDGE_HOME", str(home))  # the commands and the flow runs inherit it
        try:
            # the pool route first: it has more to do before its deployment is registered
            routes["pool"] = pool = start_route("pool", root)
            model_dir = train_synthetic(home, epochs=1, n_users=300, n_items=400, n_topics=6, seed=71)  # meanwhile
            wait_healthy(pool)
            routes["serve"] = serve = start_route("serve", root, database=pool.database)
            pool.prefect("work-pool", "create", POOL, "--type", "process")
            pool.start_runner("prefect worker", [BIN / "prefect", "worker", "start", "--pool", POOL,
                                                 "--type", "process"])
            # the repository's prefect.yaml; the command line adds the per-minute schedule and sets the options
            options = {"index": {"alias": ALIASES["pool"]}, "milvus_uri": milvus_uri, "reuse_model": True}
            pool.prefect("--no-prompt", "deploy", "--name", "nightly", "--pool", POOL, "--cron", EVERY_MINUTE,
                         "--params", json.dumps({"options": options}))
            wait_healthy(serve)
            serve.start_runner("towerbridge serve", [
                BIN / "towerbridge", "serve", "--cron", EVERY_MINUTE, "--timezone", "UTC", "--reuse-model",
                "--alias", ALIASES["serve"], "--milvus-uri", milvus_uri, "--full-cron", FULL_CRON])
            yield {"model_dir": model_dir, **wait_for_first_runs(routes, milvus_uri)}
        finally:
            stop([process for route in routes.values() for process in route.processes])


def finished(scheduled: dict, route: str) -> Outcome:
    outcome = scheduled[route]
    if isinstance(outcome, str):
        pytest.fail(outcome)
    return outcome


def check_scheduled_run_swapped(outcome: Outcome, alias: str, schedule_id: UUID, model_dir: str) -> None:
    """The run came from the cron schedule (not triggered by hand), ran after its minute,
    completed, served a new version and published the report saying so."""
    run, states = outcome.run, outcome.states
    assert run.deployment_id == outcome.deployment.id
    assert run.auto_scheduled and (run.created_by.type, run.created_by.id) == ("SCHEDULE", schedule_id)
    assert (states[0].type.value, states[0].name) == ("SCHEDULED", "Scheduled")
    assert (states[-1].type.value, states[-1].name) == ("COMPLETED", "Completed"), (
        f"run {run.name} ended {states[-1].name}: {states[-1].message}")
    scheduled_for = run.expected_start_time
    assert (scheduled_for.second, scheduled_for.microsecond) == (0, 0)  # on the minute, as the cron says
    # held until its minute (Prefect rounds the wait to the second), though its process started before
    assert states[0].state_details.scheduled_time == scheduled_for
    assert run.start_time >= scheduled_for - timedelta(seconds=1)

    serving = outcome.serving
    assert serving and serving.startswith(f"{alias}_v")
    assert (outcome.summary.get("outcome"), outcome.summary.get("serving_after")) == ("swapped", serving)
    assert outcome.summary.get("model_dir") == model_dir  # --reuse-model: the model trained above, not a new one
    [report] = outcome.artifacts
    assert (report.key, report.type) == (f"rebuild-{alias.replace('_', '-')}", "markdown")
    assert report.data.startswith(f"# Rebuild of `{alias}`: swapped")
    assert f"- serving before: `nothing`; serving now: `{serving}`" in report.data


def test_towerbridge_serve_rebuilds_on_its_cron_and_reports_what_now_serves(scheduled, milvus_uri):
    outcome = finished(scheduled, "serve")
    deployment = outcome.deployment
    [schedule] = deployment.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == (EVERY_MINUTE, "UTC")
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.tags == ["towerbridge", "nightly"]
    options = deployment.parameters["options"]
    assert (options["index"]["alias"], options["milvus_uri"], options["reuse_model"]) == (
        ALIASES["serve"], milvus_uri, True)
    check_scheduled_run_swapped(outcome, ALIASES["serve"], schedule.id, scheduled["model_dir"])
    # beside it, the same rebuild trained from scratch on its slower schedule (reuse_model off)
    full = outcome.full_retrain
    assert full is not None, "towerbridge serve did not register rebuild/full-retrain"
    [full_schedule] = full.schedules
    assert (full_schedule.schedule.cron, full_schedule.schedule.timezone) == (FULL_CRON, "UTC")
    assert full.global_concurrency_limit.limit == 1 and full.tags == ["towerbridge", "full-retrain"]
    assert full.parameters["options"] == {**{key: value for key, value in options.items() if key != "reuse_model"},
                                          "from_scratch": True}


def test_prefect_yaml_deploys_into_a_process_pool_whose_worker_rebuilds_on_the_cron(scheduled, milvus_uri):
    outcome = finished(scheduled, "pool")
    deployment = outcome.deployment
    schedules = {(item.schedule.cron, item.schedule.timezone): item for item in deployment.schedules}
    # the file's nightly schedule is the default one; --cron adds a schedule beside it
    assert set(schedules) == {(defaults.NIGHTLY_CRON, defaults.NIGHTLY_TIMEZONE), (EVERY_MINUTE, None)}
    assert (deployment.entrypoint, deployment.work_pool_name) == ("towerbridge/flows/rebuild.py:rebuild", POOL)
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.tags == ["towerbridge", "nightly"]
    assert deployment.parameters == {"options": {"index": {"alias": ALIASES["pool"]}, "milvus_uri": milvus_uri,
                                                 "reuse_model": True}}
    # the pull step's directory is where `prefect deploy` ran, not a path written in the file
    assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    check_scheduled_run_swapped(outcome, ALIASES["pool"], schedules[EVERY_MINUTE, None].id, scheduled["model_dir"])


def test_prefect_yaml_full_retrain_is_the_deployment_serve_registers():
    import yaml

    from towerbridge.flows.rebuild import full_retrain

    registered = full_retrain()
    [written] = [item for item in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
                 if item["name"] == "full-retrain"]
    assert written["schedules"] == [{"cron": defaults.FULL_RETRAIN_CRON, "timezone": defaults.NIGHTLY_TIMEZONE}]
    assert [(s.schedule.cron, s.schedule.timezone) for s in registered.schedules] == [
        (defaults.FULL_RETRAIN_CRON, defaults.NIGHTLY_TIMEZONE)]
    assert written["parameters"] == registered.parameters == {"options": {"from_scratch": True}}
    assert written["tags"] == registered.tags and written["concurrency_limit"] == 1
    assert written["entrypoint"] == "towerbridge/flows/rebuild.py:rebuild"
