# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""All-reduce across every node's GPUs, as vLLM's troubleshooting script does, timed per message size.

Started once on every node by the llmserve.cluster nccl_check role; each node starts one process per
local GPU (one in all on CPU with gloo). Ranks rendezvous through torch.distributed's TCP store on the
head's cluster address. Rank 0 writes the timings (the slowest rank's mean per message size) as JSON;
NCCL writes its NCCL_DEBUG=INFO log to this process's output, which the role reads.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
import time

NETWORK_ENVIRONMENT = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "NCCL_IB_HCA", "NCCL_IB_GID_INDEX", "VLLM_HOST_IP")


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--master-addr", required=True, help="the head's cluster address")
    parser.add_argument("--master-port", type=int, required=True)
    parser.add_argument("--nodes", nargs="+", required=True, help="every node's name, the head first (the rank order)")
    parser.add_argument("--gpus", type=int, nargs="+", required=True, help="each node's GPU count, in --nodes order")
    parser.add_argument("--node", required=True, help="this node's NAME in --nodes")
    parser.add_argument("--backend", choices=["auto", "nccl", "gloo"], default="auto")
    parser.add_argument("--sizes", type=int, nargs="+", required=True, help="message sizes in bytes")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--warmup-iterations", type=int, default=5)
    parser.add_argument("--timeout", type=int, default=300, help="seconds to wait for the other ranks")
    parser.add_argument("--output", required=True, help="where rank 0 writes the JSON result")
    return parser.parse_args(argv)


def layout(nodes, gpu_counts, node, backend):
    """(backend, world size, this node's first rank, its process count) for NODES in rank order.

    auto picks nccl only when every node has a GPU; gloo runs one CPU process per node. Every node
    computes the same answer from the same lists, so they agree without talking.
    """
    if len(nodes) != len(gpu_counts) or len(set(nodes)) != len(nodes):
        raise SystemExit(f"--nodes {nodes} and --gpus {gpu_counts} must name each node once, with one count each")
    if node not in nodes:
        raise SystemExit(f"--node {node!r} is not among --nodes {nodes}")
    if backend == "auto":
        backend = "nccl" if min(gpu_counts) > 0 else "gloo"
    if backend == "nccl" and min(gpu_counts) == 0:
        missing = [name for name, count in zip(nodes, gpu_counts) if count == 0]
        raise SystemExit(f"nccl needs a GPU on every node; none on {', '.join(missing)}")
    processes = [count if backend == "nccl" else 1 for count in gpu_counts]
    position = nodes.index(node)
    return backend, sum(processes), sum(processes[:position]), processes[position]


def rendezvous_store(dist, arguments, rank, timeout):
    """torch.distributed's key-value store; rank 0 serves it on the cluster address only.

    A store torch opens itself listens on every interface; a socket bound here and handed over
    keeps the rendezvous port off the other networks.
    """
    if rank != 0:
        return dist.TCPStore(arguments.master_addr, arguments.master_port, arguments.world_size, False, timeout), None
    listener = socket.socket(socket.AF_INET6 if ":" in arguments.master_addr else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((arguments.master_addr, arguments.master_port))
    listener.listen(max(128, arguments.world_size))
    store = dist.TCPStore(
        arguments.master_addr,
        arguments.master_port,
        arguments.world_size,
        True,
        timeout,
        wait_for_workers=False,
        master_listen_fd=listener.fileno(),
    )
    # The store serves from the descriptor: the caller keeps the socket object alive with it.
    return store, listener


def synchronize(torch, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_sum(torch, dist, device, world_size, group=None):
    """Every rank contributes ones: the sum must be the world size everywhere (vLLM's check)."""
    data = torch.ones(128, dtype=torch.float32, device=device)
    dist.all_reduce(data, op=dist.ReduceOp.SUM, group=group)
    synchronize(torch, device)
    return float(data.mean().item()) == float(world_size)


def time_all_reduce(torch, dist, device, size, iterations, warmup_iterations):
    """Mean seconds per all-reduce of SIZE bytes (float32) on the slowest rank."""
    buffer = torch.zeros(max(1, size // 4), dtype=torch.float32, device=device)
    for _iteration in range(warmup_iterations):
        dist.all_reduce(buffer)
    synchronize(torch, device)
    dist.barrier()
    start = time.perf_counter()
    for _iteration in range(iterations):
        dist.all_reduce(buffer)
    synchronize(torch, device)
    elapsed = torch.tensor([(time.perf_counter() - start) / iterations], dtype=torch.float64, device=device)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    return float(elapsed.item())


def run_rank(local_rank, arguments):
    import torch
    import torch.distributed as dist

    rank = arguments.first_rank + local_rank
    if arguments.backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    timeout = datetime.timedelta(seconds=arguments.timeout)
    store, _listener = rendezvous_store(dist, arguments, rank, timeout)
    dist.init_process_group(
        backend=arguments.backend,
        store=store,
        rank=rank,
        world_size=arguments.world_size,
        timeout=timeout,
    )
    result = {"backend": arguments.backend, "world_size": arguments.world_size, "torch_version": torch.__version__}
    result["sum_correct"] = check_sum(torch, dist, device, arguments.world_size)
    if arguments.backend == "nccl":
        # vLLM also keeps a gloo group on CPU for its control messages: check it takes the same path.
        cpu_group = dist.new_group(backend="gloo")
        result["cpu_group_sum_correct"] = check_sum(torch, dist, torch.device("cpu"), arguments.world_size, cpu_group)
        version = torch.cuda.nccl.version()
        # A tuple such as (2, 21, 5) in recent torch; older releases return one integer (2708).
        result["nccl_version"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    hosts = [None] * arguments.world_size
    dist.all_gather_object(hosts, socket.gethostname())
    result["ranks_by_host"] = {host: hosts.count(host) for host in dict.fromkeys(hosts)}
    result["timings"] = [
        {
            "bytes": size,
            "seconds": time_all_reduce(torch, dist, device, size, arguments.iterations, arguments.warmup_iterations),
            "iterations": arguments.iterations,
        }
        for size in arguments.sizes
    ]
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        temporary = arguments.output + ".tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
        os.replace(temporary, arguments.output)
    print(f"rank {rank}: all-reduce sums correct: {result['sum_correct']}", flush=True)
    if not result["sum_correct"] or not result.get("cpu_group_sum_correct", True):
        raise SystemExit(f"rank {rank}: all-reduce returned a wrong sum")


def main(argv=None):
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    arguments.backend, arguments.world_size, arguments.first_rank, local_processes = layout(
        arguments.nodes, arguments.gpus, arguments.node, arguments.backend
    )
    print(
        f"{arguments.node}: ranks {arguments.first_rank}..{arguments.first_rank + local_processes - 1} "
        f"of {arguments.world_size} ({arguments.backend})",
        flush=True,
    )
    # What the node's environment handed over: the first thing to compare when ranks never meet.
    print(
        " ".join(f"{name}={os.environ.get(name, '')}" for name in NETWORK_ENVIRONMENT if os.environ.get(name)),
        flush=True,
    )
    if local_processes == 1:
        run_rank(0, arguments)
        return
    import torch.multiprocessing

    torch.multiprocessing.spawn(run_rank, args=(arguments,), nprocs=local_processes, join=True)


if __name__ == "__main__":
    main()
