"""Tensor-parallel worker processes on one machine. Rank 0 is the engine's own process; ranks
1..tp-1 are spawned here, load the plugins themselves, build their shard of the model and then
run every step rank 0 broadcasts, until it broadcasts None. Collectives use gloo on CPU and NCCL
on CUDA; step inputs travel on a gloo group either way. The rendezvous is a file in a private
temporary directory, so no port is hard-coded and two runs never collide; it is removed as soon
as every rank has joined. Under torchrun (RANK/WORLD_SIZE set, e.g. across machines) nothing is
spawned: every process builds the engine, rank 0 runs the workload and the others serve steps,
then exit.

Faults end within seconds: each worker reports its phase (started, joined, ready) through a pipe;
rank 0 waits for the rendezvous while watching that every worker is alive, and once the group
stands a monitor thread stops the other ranks as soon as one dies, so that no collective waits
on a dead peer. A worker exits when rank 0 dies, and ignores Ctrl-C: rank 0 stops it."""
import multiprocessing.connection
import multiprocessing.resource_tracker
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.constants import default_pg_timeout

RENDEZVOUS_TIMEOUT_S = 300  # a live worker that never joins (a stopped process, a stuck import)
STOP_GRACE_S = 5  # how long close() waits for a worker to leave on its own before killing it
DIR_ENV = "NVLLM_TP_DIR"  # set in the workers' environment: where a worker leaves a note for rank 0
GUARD_NOTE = "started-without-main-guard"
PHASES = {None: "while starting (before it ran any nvllm code)", "started": "during the rendezvous",
          "joined": "while loading its shard of the model", "ready": "while running a step"}


class WorkerError(RuntimeError):
    pass


def _file_store(path: str, tp: int) -> dist.Store:
    """The rendezvous file's store, made on the calling thread. FileStore's constructor holds the GIL
    while it retries a file it cannot open, so it must not run on the rendezvous thread (rank 0 removes
    the directory when it aborts, and its main thread could then never exit) nor before rank 0 has
    made the directory (a worker waits here, where its watching thread can still run)."""
    while not os.path.isdir(os.path.dirname(path)):  # rank 0 makes it once every worker is spawned
        time.sleep(0.01)
    store = dist.FileStore(path, tp)
    store.set_timeout(default_pg_timeout)
    return dist.PrefixStore("default_pg", store)  # as init_process_group's own file:// rendezvous does


def _init(rank: int, tp: int, device: str, store: dist.Store | None):
    """Join the process group: through a store (`_file_store`), or torchrun's environment when None."""
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    elif torch.get_num_threads() * tp > (os.cpu_count() or 1):
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // tp))  # ranks share the cores
    if store is None:
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=tp)
    else:
        dist.init_process_group(backend, store=store, rank=rank, world_size=tp)
    return dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD


def _worker(rank: int, tp: int, store: str, runner_cls: type, runner_args: tuple, conn):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 decides when the workers stop
    threading.Thread(target=_exit_with_parent, args=(os.path.dirname(store),), daemon=True).start()
    try:
        conn.send(("started", os.getpid()))
        group = _init(rank, tp, runner_args[0].device, _file_store(store, tp))
        dist.barrier(group=group)  # every rank has joined: rank 0 may remove the rendezvous file
        conn.send(("joined", None))
        from nvllm.plugins import load_plugins

        load_plugins()
        _serve(runner_cls, runner_args, group, on_ready=lambda: conn.send(("ready", None)))
    except BaseException:
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:  # rank 0 is gone: remove its files now (exiting would stop the watching thread)
            _exit_with_parent(os.path.dirname(store), timeout=STOP_GRACE_S)
        # out without the interpreter's teardown: a store or process group left half made (rank 0
        # went away mid-rendezvous) still runs C++ threads, whose destructors would abort the
        # process with "terminate called without an active exception"
        sys.stderr.flush()
        os._exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _exit_with_parent(rendezvous_dir: str, timeout: float | None = None):
    """A worker outlives no rank 0: when it dies (even by SIGKILL), remove its files and exit."""
    parent = mp.parent_process()
    parent.join(timeout)
    if not parent.is_alive():
        shutil.rmtree(rendezvous_dir, ignore_errors=True)
        os._exit(1)


def _serve(runner_cls: type, runner_args: tuple, group, on_ready=None):
    """A worker's life: build the shard (`runner_cls(*runner_args, control_group=group)`: the
    engine's model runner), then run each step rank 0 broadcasts until None."""
    runner = runner_cls(*runner_args, control_group=group)
    if on_ready:
        on_ready()
    while True:
        message = [None]
        dist.broadcast_object_list(message, src=0, group=group)
        if message[0] is None:
            return
        inputs, num_logits, num_layers = message[0]
        runner.forward(*runner.prepare(inputs, num_logits, num_layers=num_layers))


def _exited(p, timeout: float = 0) -> bool:
    """Has the process ended (waiting at most timeout s)? Read from its sentinel, which (unlike
    exitcode) does not depend on which thread reaps it. A process never started has not ended."""
    try:
        sentinel = p.sentinel
    except ValueError:  # its start failed: the spawn loop's error is the one to report
        return False
    return bool(multiprocessing.connection.wait([sentinel], timeout=timeout))


def launched_by_torchrun(tp: int) -> bool:
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) == tp


def _refuse_nested_spawn():
    """In a spawned process that is still importing the main script, starting workers fails (the
    script has no `__main__` guard and is running again): leave rank 0 a note and exit quietly."""
    if not getattr(mp.current_process(), "_inheriting", False):
        return
    note_dir = os.environ.get(DIR_ENV)
    if note_dir and os.path.isdir(note_dir):
        with open(os.path.join(note_dir, f"{GUARD_NOTE}-{os.getpid()}"), "w"):
            pass
        os._exit(3)
    raise RuntimeError(_guard_message("this process"))


def _guard_message(who: str) -> str:
    return (f"{who} ran the main script again instead of serving as a tensor-parallel worker: the script "
            f"that creates the LLM has no `if __name__ == \"__main__\":` guard. With tp > 1 nvllm spawns "
            f"one process per rank, and each imports the main script; put the code that builds and uses "
            f"the LLM under that guard")


@contextmanager
def _spawning(env_dir: str):
    """Children start with SIGINT blocked (a Ctrl-C mid-import would print a traceback per rank;
    `_worker` then ignores it, which drops one still pending) and with DIR_ENV set; both are restored
    in this process afterwards. A Ctrl-C that comes meanwhile (to this thread once it is unblocked, or
    to any other thread) is only noted, then handled as usual once the workers have started: neither
    lost nor raised in the middle of starting one."""
    # multiprocessing starts its resource tracker on the first spawn, and unblocks SIGINT in the
    # spawning thread when it has: started now, before the block, it leaves the block alone
    multiprocessing.resource_tracker.ensure_running()
    previous_env = os.environ.get(DIR_ENV)
    os.environ[DIR_ENV] = env_dir
    noted = []
    try:
        previous_handler = signal.signal(signal.SIGINT, lambda signum, frame: noted.append(signum))
    except ValueError:  # not the main thread: the handler stays as it is
        previous_handler = None
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        if previous_env is None:
            os.environ.pop(DIR_ENV, None)
        else:
            os.environ[DIR_ENV] = previous_env
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)  # one pending for this thread is noted now
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
            if noted and callable(previous_handler):
                previous_handler(signal.SIGINT, None)  # Python's own raises KeyboardInterrupt
            elif noted and previous_handler == signal.SIG_DFL:
                signal.raise_signal(signal.SIGINT)


class Workers:
    """Spawns ranks 1..tp-1 and joins the process group as rank 0 (or, under torchrun, joins as
    the rank torchrun gave: a rank other than 0 serves steps here and exits)."""

    def __init__(self, tp: int, runner_cls: type, runner_args: tuple):
        self.tp, self.processes, self.conns, self.dir = tp, [], [], None
        self.phase, self.reports, self.first_dead, self.stopping = {}, {}, None, False
        # the monitor thread and the engine's thread both read the pipes and exit codes when a worker
        # dies: one at a time (two readers of one pipe can split a message and lose the phase)
        self.lock = threading.RLock()
        self.threads = torch.get_num_threads()  # _init lowers it while ranks share the cores
        if launched_by_torchrun(tp):
            rank = int(os.environ["RANK"])
            self.group = _init(rank, tp, runner_args[0].device, None)
            if rank != 0:
                _serve(runner_cls, runner_args, self.group)
                dist.destroy_process_group()
                sys.exit(0)
            return
        _refuse_nested_spawn()
        # the private directory exists only once every worker has its start-up data: a rank 0 killed
        # while spawning leaves no file (after that, a worker removes it when rank 0 dies)
        self.dir = tempfile.mkdtemp(prefix="nvllm-tp-")
        os.rmdir(self.dir)
        store = os.path.join(self.dir, "rendezvous")
        ctx = mp.get_context("spawn")
        try:
            with _spawning(self.dir):
                for rank in range(1, tp):
                    receive, send = ctx.Pipe(duplex=False)
                    p = ctx.Process(target=_worker, args=(rank, tp, store, runner_cls, runner_args, send), daemon=True,
                                    name=f"nvllm-tp{rank}")
                    self.processes.append(p)
                    self.conns.append(receive)
                    p.start()
                    send.close()
            os.mkdir(self.dir, 0o700)
            self.group = self._rendezvous(runner_args[0].device, store)
            dist.barrier(group=self.group)
        except BaseException as e:
            if isinstance(e, Exception) and not isinstance(e, WorkerError) and self.dead():
                e = self.error()
            self.abort()
            raise e
        shutil.rmtree(self.dir, ignore_errors=True)  # every rank has joined: the file has done its work
        threading.Thread(target=self._monitor, daemon=True, name="nvllm-tp-monitor").start()

    # -- waiting without hanging ---------------------------------------------------------------
    def _rendezvous(self, device: str, store: str):
        """Join the group on a thread while this one watches the workers: a worker that dies, or
        never starts, ends the wait within a fraction of a second (and Ctrl-C works meanwhile)."""
        if device == "cuda":
            torch.cuda.set_device(0)
        result, file_store = {}, _file_store(store, self.tp)

        def join():
            try:
                result["group"] = _init(0, self.tp, device, file_store)
            except BaseException as e:
                result["error"] = e

        thread = threading.Thread(target=join, daemon=True, name="nvllm-tp-rendezvous")
        thread.start()
        deadline = time.monotonic() + RENDEZVOUS_TIMEOUT_S
        while thread.is_alive():
            thread.join(0.1)
            if self.dead():
                raise self.error()
            if time.monotonic() > deadline:
                missing = [r for r in range(1, self.tp) if self.phase.get(r) is None]
                raise WorkerError(f"a tensor-parallel worker failed: rank(s) {missing or 'all'} did not join within "
                                  f"{RENDEZVOUS_TIMEOUT_S} s (alive but stuck: a stopped process or a hung import?)")
        if "error" in result:
            raise result["error"]
        return result["group"]

    def _drain(self):
        """Read every report the workers sent so far (the caller holds self.lock)."""
        for rank, conn in enumerate(self.conns, 1):
            try:
                while conn.poll():
                    kind, value = conn.recv()
                    if kind == "error":
                        self.reports[rank] = value
                    else:
                        self.phase[rank] = kind
            except (EOFError, OSError):
                pass

    def dead(self) -> bool:
        """Has any worker exited (or reported an error)? Also records the first one seen."""
        with self.lock:
            self._drain()
            for rank, p in enumerate(self.processes, 1):
                if self.first_dead is None and (_exited(p) or rank in self.reports):
                    self.first_dead = rank
            return self.first_dead is not None

    def _monitor(self):
        """Once the group stands: when a worker dies, stop the others, so that no rank waits in a
        collective on a peer that will never answer (rank 0's pending call then fails at once)."""
        multiprocessing.connection.wait([p.sentinel for p in self.processes])
        if self.stopping:
            return
        self.dead()
        time.sleep(0.5)  # let a worker that raised send its traceback and exit on its own
        if not self.stopping:
            self._kill()

    # -- the error -------------------------------------------------------------------------------
    def error(self) -> WorkerError:
        """The failure of a worker, as one clear error naming the rank, the phase and the likely cause."""
        deadline = time.monotonic() + 2  # a failing worker's report arrives just before it exits
        for p in self.processes:
            _exited(p, timeout=max(0.0, deadline - time.monotonic()))
        with self.lock:
            self.dead()
            if self.first_dead is None:
                return WorkerError("a tensor-parallel worker failed: unknown rank (every worker is still running)")
            rank = self.first_dead
            p = self.processes[rank - 1]
            p.join(timeout=1)  # it has exited: this reaps it, for its exit code
            phase = self.phase.get(rank)
        head = f"a tensor-parallel worker failed: rank {rank}" + (f" (exit code {p.exitcode})" if p.exitcode is not None else "")
        guard_notes = [f for f in os.listdir(self.dir) if f.startswith(GUARD_NOTE)] if self.dir and os.path.isdir(self.dir) else []
        if guard_notes:
            return WorkerError(f"{head}: {_guard_message(f'tp rank {rank}')}")
        if rank in self.reports:
            return WorkerError(f"{head} raised {PHASES[phase]}; its traceback:\n{self.reports[rank]}")
        if p.exitcode is not None and p.exitcode < 0:
            name = signal.Signals(-p.exitcode).name if -p.exitcode in signal.Signals._value2member_map_ else -p.exitcode
            return WorkerError(f"{head}: killed by {name} {PHASES[phase]}. Likely cause: it was killed from outside, "
                               f"or by the out-of-memory killer (see `dmesg`)")
        if phase is None:
            return WorkerError(f"{head}: it exited {PHASES[phase]}; its stderr above says why. Likely cause: the "
                               f"script that creates the LLM has no `if __name__ == \"__main__\":` guard (tp > 1 "
                               f"spawns processes that import it), or a failing import in the worker")
        return WorkerError(f"{head}: it exited {PHASES[phase]} without a report; its stderr above says why")

    # -- stopping --------------------------------------------------------------------------------
    def _kill(self):
        with self.lock:
            for p in self.processes:
                if not _exited(p):
                    p.kill()
            for p in self.processes:
                p.join(timeout=STOP_GRACE_S)

    def fail(self, error: BaseException) -> BaseException:
        """Rank 0 raised `error` mid-step, which under TP usually means a worker died: stop every
        worker and return the error to raise, the worker's (naming it) where one failed."""
        comm_error = any(word in str(error).lower() for word in ("gloo", "nccl", "connection"))
        worker_error = self.error() if self.dead() or comm_error else None
        self.abort()
        return error if worker_error is None else worker_error

    def abort(self):
        """Stop every worker now (a rank failed, or rank 0 was interrupted mid-step): no goodbye."""
        self.stopping = True
        self._kill()
        self._release()

    def close(self):
        """A clean stop between steps: tell the workers, then wait for them (briefly)."""
        self.stopping = True
        if dist.is_initialized() and not self.dead():
            try:
                dist.broadcast_object_list([None], src=0, group=self.group)
            except Exception:
                pass
        for p in self.processes:
            p.join(timeout=STOP_GRACE_S)
        self._kill()
        self._release()

    def _release(self):
        if dist.is_initialized():
            dist.destroy_process_group()
        for conn in self.conns:
            conn.close()
        self.conns = []
        if self.dir:
            # interrupted mid-rendezvous, this rank's own joining thread may still write the store's
            # file while the directory is removed (rmtree then fails on a non-empty directory): again
            # until it is gone; nothing re-creates the directory itself
            for _ in range(100):
                shutil.rmtree(self.dir, ignore_errors=True)
                if not os.path.exists(self.dir):
                    break
                time.sleep(0.01)
        torch.set_num_threads(self.threads)
