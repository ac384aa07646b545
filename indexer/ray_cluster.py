"""Joining Ray for one command: a cluster address checked before anything is made,
and a session (the one already initialised in this process, a local one, or the
cluster's) shut down afterwards."""

from __future__ import annotations

import gc
import logging
import os
import re
import socket
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from usesearch import interrupts
from usesearch.errors import DEBUG_ENV, UsesearchError

log = logging.getLogger(__name__)

BACKEND_LOG_LEVEL = "RAY_BACKEND_LOG_LEVEL"  # the level of Ray's C++ logs, read where each of its processes starts


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """Refuse a cluster address (``HOST:PORT`` or ``ray://HOST:PORT``) nothing answers
    at, in one line and before the index folder is made: ``ray.init`` would retry it
    for minutes, a warning every few seconds. "auto" and a local Ray are Ray's to find."""
    if address in (None, "local", "auto"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UsesearchError(f"--ray {address}: give the cluster's HOST:PORT (or ray://HOST:PORT, or auto)")
    try:
        conn = socket.create_connection((host.strip("[]"), int(port)), timeout)
    except OSError as exc:
        raise UsesearchError(f"--ray {address}: no Ray cluster answers there ({exc.strerror or exc})") from None
    with conn:
        if os.environ.get("RAY_USE_TLS", "0") not in ("", "0"):  # its gRPC behind TLS: Ray's own check then
            return
        # Ray's GCS (and its client server, ray://) speaks gRPC: an HTTP/2 server answers a
        # client's preface with its SETTINGS frame (type 4, the frame header's fourth byte).
        # Something else there (the dashboard's port, 8265, given for the GCS's 6379) let
        # ``ray.init`` wait minutes. Written by hand: these two frames are all it takes.
        try:
            conn.settimeout(timeout)
            conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            head = conn.recv(9)
        except OSError:
            head = b""
    if len(head) < 4 or head[3] != 4:
        raise UsesearchError(
            f"--ray {address}: something answers there, but not a Ray cluster (give the head's GCS "
            "port, `ray start --head --port`, 6379 by default; not the dashboard's 8265)"
        )


@contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Ray for one command: the one already initialised in this process, else a
    local one (``address`` None or "local") or the cluster at ``address``, shut down
    afterwards. Ray Data's own progress output is off: the CLI shows its own."""
    import ray

    started_here = not ray.is_initialized()
    # The printer is Ray's own again only after shutdown: its thread that prints the
    # cluster's reports runs until then, and a late one would land before `--json`'s report.
    with ray_reports_off_stdout():
        if started_here:
            _start_ray(address)
        undo = _configure_ray_data()
        try:
            yield
        finally:
            undo()
            if started_here:
                try:
                    let_ray_data_threads_end()
                finally:  # a second Ctrl-C while it waits: Ray is shut down all the same
                    ray.shutdown()


def _configure_ray_data() -> Callable[[], None]:
    """Ray Data as every run of ours wants it, set before any dataset is made (each
    copies the context when made: set later, in ``through_actors``, the first datasets
    ran unordered and photos were committed out of the walk's order, their segment ids
    other than a sequential run's): results in order, no progress bars (the CLI shows
    its own), its log and its warning on a run with fewer photos than actors (``override_num_blocks``,
    a Ray Data setting no user of ours sets) left out. Returns what puts the log level
    and the warnings' filters back (a Ray or a notebook of the caller's: theirs again)."""
    import ray.data

    logger = logging.getLogger("ray.data")
    level = logger.level
    logger.setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    warnings.filterwarnings("ignore", message="The minimum number of concurrent actors", category=UserWarning)
    ours = warnings.filters[0]

    def undo() -> None:
        logger.setLevel(level)
        if ours in warnings.filters:  # (that one entry: filters added meanwhile stay)
            warnings.filters.remove(ours)  # type: ignore[attr-defined]  # (a list at run time)
            getattr(warnings, "_filters_mutated", lambda: None)()  # (as catch_warnings' exit: caches dropped)

    return undo


def _start_ray(address: str | None) -> None:
    """``ray.init`` for ``ray_session``, quiet. Ray's C++ core logs at error level, on
    stderr, a note of its own making on every run: Ray Data's actors take their
    constructor's arguments from the object store and restart ("core_worker.cc: Actor
    with class name ... has constructor arguments in the object store and max_restarts
    > 0", 400 characters). The level is read from the environment where each of Ray's
    processes starts, and Ray announces it in a line of its own, left out here with the
    driver's other C++ lines below error level (``NATIVE_NOTES``). So a
    local cluster's own log files (raylet.out, gcs_server.out, the workers') keep only
    fatal lines too: USESEARCH_DEBUG=1 (or a RAY_BACKEND_LOG_LEVEL or RAY_LOG_TO_STDERR
    of the user's) keeps every line, on stderr and in those files."""
    import ray
    import ray.data

    quiet = not any(os.environ.get(name) for name in (DEBUG_ENV, BACKEND_LOG_LEVEL, "RAY_LOG_TO_STDERR"))
    if quiet:
        os.environ[BACKEND_LOG_LEVEL] = "fatal"
    try:
        with stderr_without(NATIVE_NOTES) if quiet else nullcontext():
            ray.init(
                address=None if address in (None, "local") else address,
                include_dashboard=False,
                log_to_driver=False,
                # Ray's own warnings (its token authentication, on by default; progress bars off)
                # came before the run's every line: the CLI says what a user needs itself.
                logging_level=logging.ERROR,
            )
    except ConnectionError as exc:  # --ray auto with none running: Ray's words name an --address flag we lack
        ray.shutdown()
        if address != "auto" or "Could not find any running Ray instance" not in str(exc):
            raise  # (an unreachable RAY_ADDRESS, a dead cluster's stale address file: Ray's words)
        raise UsesearchError(
            "--ray auto: no Ray cluster runs on this machine (`ray start --head` starts one); "
            "or give --ray HOST:PORT, or a bare --ray for a Ray of this run's own"
        ) from exc
    except BaseException:  # a Ctrl-C while Ray starts: its half-started session crashed the exit
        ray.shutdown()
        raise
    finally:
        if quiet:
            os.environ.pop(BACKEND_LOG_LEVEL, None)
    interrupts.take_sigterm_back()  # ray.init put in its own, which exits at once (15), saying nothing


# The driver's own C++ lines below error level: the one saying it read BACKEND_LOG_LEVEL
# ("[... I ...] logging.cc:303: Set ray log level ..."), and those its GCS client logs
# before that level applies to it, e.g. at a cluster address that answers but is no Ray:
# "[... W ...] gcs_client.cc:210: Failed to get cluster ID from GCS server" or
# "rpc_client.h:153: Failed to connect to GCS at address ...", a line every few seconds
# while it retries.
NATIVE_NOTES = re.compile(r"^\[[^\]]* [IW] [^\]]*\] [\w.]+\.(cc|h):\d+: ")


@contextmanager
def stderr_without(dropped: re.Pattern[str]) -> Iterator[None]:
    """This process's stderr (file descriptor 2, where native code writes too) held in a
    temporary file for the block, then written out whole but for the lines ``dropped``
    matches: nothing else is lost, only delayed. Processes started within the block
    inherit the file: Ray's send their output to log files of their own."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not dropped.match(line)))
            sys.stderr.flush()


@contextmanager
def ray_reports_off_stdout() -> Iterator[None]:
    """Ray's driver prints what its cluster reports (a worker died: two paragraphs per
    death, "(raylet) A worker died or was killed ...") on stdout, where `index --json`
    writes its report, and does so whatever ``log_to_driver`` says. The run records
    such a photo itself (``WorkerDied``, "a crash, or out of memory"): Ray's words go
    to this module's logger at debug level, and to stderr with USESEARCH_DEBUG set.
    Ray has no option for it, so its printer (``ray._private.worker.print_to_stdstream``,
    called with the report and, since Ray 2.38, a flag) is wrapped for the session; a
    Ray without that function is left as it is."""
    from ray._private import worker as ray_worker

    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None:
        yield
        return

    def divert(data: dict, *args: Any, **kwargs: Any) -> None:
        if data.get("pid") != "raylet":  # a worker's own output, when a caller's Ray forwards it
            original(data, *args, **kwargs)
            return
        for line in data.get("lines", []):
            log.debug("ray: %s", line)
        if os.environ.get(DEBUG_ENV):
            original({**data, "is_err": True}, *args, **kwargs)

    ray_worker.print_to_stdstream = divert
    try:
        yield
    finally:
        ray_worker.print_to_stdstream = original


# Ray Data's iterator threads (ray/data/_internal/block_batching/util.py). A run cut
# short by an error leaves them waiting on a block an actor is still computing; if Ray
# shuts down under them, the next call they make ends the whole process (Ray's
# "core worker has already been shutdown ... will exit"), before the error is said.
# (Its "Prefetcher" thread is left: parked on a condition that no one signals any more,
# it makes no call; joined, it would hold the run for the whole timeout.)
RAY_DATA_THREADS = ("iter_threaded",)
THREADS_END_S = 60.0


def let_ray_data_threads_end(timeout_s: float = THREADS_END_S) -> None:
    """Wait (up to ``timeout_s`` in all) for Ray Data's iterator threads to end: those of
    an iterator closed or dropped stop once their current block comes."""
    gc.collect()  # an iterator dropped in a cycle (a traceback's frames) is closed now, its threads told to stop
    deadline = time.monotonic() + timeout_s
    for thread in threading.enumerate():
        if thread.name in RAY_DATA_THREADS and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


@contextmanager
def ray_for_run(address: str | None, device: str | None) -> Iterator[tuple[str, int]]:
    """``ray_session`` for an indexing run, yielding its actors' device and the cluster's
    GPUs: a cluster that cannot be joined, or that lacks the device asked for, is refused
    before the run makes its index folder."""
    with ray_session(address):
        import ray

        gpus = int(ray.cluster_resources().get("GPU", 0))
        yield actor_device(device, gpus), gpus


def actors_summary(device: str, gpus: int, precision: str, workers: int | None = None) -> str:
    """The run summary's line for where the actors' models ran. ``--workers`` past the
    cluster's GPUs is said, not refused: an autoscaling cluster adds GPUs as actors
    ask; elsewhere the rest wait for the whole run, as Ray's own warnings say."""
    said = "" if precision == "auto" else f"; {precision}"
    if device == "cuda" and workers and workers > gpus:
        said += f"; --workers {workers}: {workers - gpus} wait for a GPU the cluster does not have now"
    return f"models on Ray's {'GPU' if device == 'cuda' else 'CPU'} workers (the cluster has {gpus} GPU(s){said})"


def check_actor_precision(device: str | None, precision: str, address: str | None) -> None:
    """``--precision`` refused before anything loads: where the actors run on this
    machine (no cluster address), against the device they will get here; on a cluster,
    its spelling alone (each actor's own device refuses it as its models load)."""
    from usesearch.devices import check_precision as check_spelling
    from usesearch.devices import resolve_device, uses_bf16

    check_spelling(precision)
    if precision == "bfloat16" and address in (None, "local"):  # (auto and float32 run on any device)
        uses_bf16(resolve_device(device), precision)


def actor_device(device: str | None, gpus: int) -> str:
    """The models' device in every actor, by the rule of ``usesearch.devices``: the
    cluster's GPUs where it has them (one per actor), else its CPUs; ``cuda`` with no
    GPU in the cluster is refused, ``cpu`` keeps the actors off the GPUs."""
    if device in (None, "auto"):
        return "cuda" if gpus else "cpu"
    if device.startswith("cuda"):
        if device != "cuda":
            raise UsesearchError(f"--device {device}: on Ray each actor gets a GPU of its own; give --device cuda")
        if not gpus:
            raise UsesearchError(
                "--device cuda: this Ray cluster has no GPU; use --device cpu, or join a cluster with GPUs"
            )
        return "cuda"
    if device != "cpu":
        raise UsesearchError(f"--device {device}: usesearch runs its models on cpu or cuda")
    return "cpu"
