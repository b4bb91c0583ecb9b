"""Tensor-parallel worker processes on one machine. Rank 0 is the engine's own process; ranks
1..tp-1 are spawned here, load the plugins themselves, build their shard of the model and then
run every step rank 0 broadcasts, until it broadcasts None. Collectives use gloo on CPU and NCCL
on CUDA; step inputs travel on a gloo group either way. The rendezvous is a file, so no port is
hard-coded and two runs never collide. Under torchrun (RANK/WORLD_SIZE set, e.g. across
machines) nothing is spawned: every process builds the engine, rank 0 runs the workload and the
others serve steps, then exit."""
import os
import sys
import tempfile
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

JOIN_TIMEOUT_S = 30


class WorkerError(RuntimeError):
    pass


def _init(rank: int, tp: int, device: str, store: str | None):
    """Join the process group: a file rendezvous, or torchrun's environment when store is None."""
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    elif torch.get_num_threads() * tp > (os.cpu_count() or 1):
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // tp))  # ranks share the cores
    dist.init_process_group(backend, init_method=f"file://{store}" if store else "env://", rank=rank, world_size=tp)
    return dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD


def _worker(rank: int, tp: int, store: str, runner_args: tuple, errors):
    from nvllm.engine.model_runner import ModelRunner
    from nvllm.plugins import load_plugins

    try:
        group = _init(rank, tp, runner_args[0].device, store)
        load_plugins()
        _serve(runner_args, group)
    except BaseException:
        errors.put((rank, traceback.format_exc()))
        raise SystemExit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _serve(runner_args: tuple, group):
    """A worker's life: build the shard, then run each step rank 0 broadcasts until None."""
    from nvllm.engine.model_runner import ModelRunner

    runner = ModelRunner(*runner_args, control_group=group)
    while True:
        message = [None]
        dist.broadcast_object_list(message, src=0, group=group)
        if message[0] is None:
            return
        runner.forward(*runner.prepare(message[0]))


def launched_by_torchrun(tp: int) -> bool:
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) == tp


class Workers:
    """Spawns ranks 1..tp-1 and joins the process group as rank 0 (or, under torchrun, joins as
    the rank torchrun gave: a rank other than 0 serves steps here and exits)."""

    def __init__(self, tp: int, runner_args: tuple):
        self.tp, self.processes, self.store = tp, [], None
        self.threads = torch.get_num_threads()  # _init lowers it while ranks share the cores
        if launched_by_torchrun(tp):
            rank = int(os.environ["RANK"])
            self.group = _init(rank, tp, runner_args[0].device, None)
            if rank != 0:
                _serve(runner_args, self.group)
                dist.destroy_process_group()
                sys.exit(0)
            return
        fd, self.store = tempfile.mkstemp(prefix="nvllm-tp-")
        os.close(fd)
        os.unlink(self.store)  # the file store creates it
        ctx = mp.get_context("spawn")
        self.errors = ctx.SimpleQueue()
        self.processes = [ctx.Process(target=_worker, args=(rank, tp, self.store, runner_args, self.errors),
                                      daemon=True, name=f"nvllm-tp{rank}") for rank in range(1, tp)]
        for p in self.processes:
            p.start()
        self.group = _init(0, tp, runner_args[0].device, self.store)

    def error(self) -> WorkerError:
        """The failure of a worker, as one clear error (call after a collective failed)."""
        for p in self.processes:
            p.join(timeout=JOIN_TIMEOUT_S if p.exitcode is None else 0)
        reports = []
        while self.processes and not self.errors.empty():
            rank, tb = self.errors.get()
            reports.append(f"--- tp rank {rank} ---\n{tb}")
        dead = [f"rank {r} (exit code {p.exitcode})" for r, p in enumerate(self.processes, 1) if p.exitcode]
        detail = "\n".join(reports) or "no traceback: the process was killed"
        return WorkerError(f"a tensor-parallel worker failed: {', '.join(dead) or 'unknown rank'}\n{detail}")

    def close(self):
        if dist.is_initialized():
            try:
                if all(p.is_alive() for p in self.processes):
                    dist.broadcast_object_list([None], src=0, group=self.group)
            except Exception:
                pass
            dist.destroy_process_group()
        for p in self.processes:
            p.join(timeout=JOIN_TIMEOUT_S)
            if p.is_alive():
                p.kill()
                p.join()
        if self.store and os.path.exists(self.store):
            os.unlink(self.store)
        torch.set_num_threads(self.threads)
