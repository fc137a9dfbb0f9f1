"""Which process of how many this one is, read from the environment: pure functions, so every
launcher (`wsss launch`, SLURM, a Kubernetes Indexed Job, variables set by hand) is parsed
and checked the same way, and the errors are testable without starting any process.

Variables, first found wins:

- TF_CONFIG (TensorFlow's own): `{"cluster": {"worker": [host:port, ...]}, "task": {"type":
  "worker", "index": i}}` (a "chief" list, when given, comes first).
- process count: KERAS_DISTRIBUTION_NUM_PROCESSES, WSSS_NUM_PROCESSES, SLURM_NTASKS.
- process id: KERAS_DISTRIBUTION_PROCESS_ID, WSSS_PROCESS_ID, SLURM_PROCID, JOB_COMPLETION_INDEX.
- addresses: KERAS_DISTRIBUTION_JOB_ADDRESSES (host:port of every process, comma-separated;
  the first is the coordinator: JAX needs only it, TensorFlow all of them), else
  WSSS_COORDINATOR (host:port of process 0: enough for JAX; TensorFlow then takes port + i on
  that host for process i, so one machine only).

A process count (or TF_CONFIG) of more than one describes a cluster; SLURM_NTASKS alone does
not, without an address: an interactive `srun -n 4 --pty bash` sets it for ordinary
single-process commands too.
"""

import dataclasses
import hashlib
import json
import os
import socket
import time

from wsss_keras.errors import WSSSError

COUNT_VARIABLES = ("KERAS_DISTRIBUTION_NUM_PROCESSES", "WSSS_NUM_PROCESSES", "SLURM_NTASKS")
ID_VARIABLES = ("KERAS_DISTRIBUTION_PROCESS_ID", "WSSS_PROCESS_ID", "SLURM_PROCID", "JOB_COMPLETION_INDEX")
ADDRESS_VARIABLES = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "WSSS_COORDINATOR")
TIMEOUT_VARIABLE = "WSSS_CLUSTER_TIMEOUT"  # seconds to wait for the coordinator and the other processes
DEFAULT_TIMEOUT = 300


class ClusterError(WSSSError):
    """The variables describing the processes of a multi-process run are missing or inconsistent."""


@dataclasses.dataclass(frozen=True)
class Cluster:
    """num_processes processes; this one is `process_id`; `addresses[i]` is process i's
    host:port (TensorFlow's workers), `addresses[0]` the coordinator; `source` names the
    variables it was read from, for messages."""

    num_processes: int
    process_id: int
    addresses: tuple
    source: str

    @property
    def is_chief(self):
        return self.process_id == 0

    @property
    def coordinator(self):
        return self.addresses[0]

    def tf_config(self):
        """TF_CONFIG's JSON for this process (MultiWorkerMirroredStrategy)."""
        return json.dumps({"cluster": {"worker": list(self.addresses)},
                           "task": {"type": "worker", "index": self.process_id}})


def _first(environ, names):
    for name in names:
        value = environ.get(name)
        if value not in (None, ""):
            return name, value
    return None, None


def _integer(name, value):
    try:
        return int(value)
    except ValueError:
        raise ClusterError(f"{name}={value!r}: not a whole number; set it to the process count or id.") from None


def _check_address(name, address):
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"{name}: {address!r} is not host:port; give e.g. 10.0.0.1:12345.")
    return address


def _from_tf_config(text):
    try:
        config = json.loads(text)
        cluster = config["cluster"]
        task = config["task"]
        roles = [role for role in ("chief", "worker") if cluster.get(role)]
        addresses = tuple(address for role in roles for address in cluster[role])
        offset = 0 if task["type"] == "chief" else len(cluster.get("chief") or [])
        if task["type"] not in roles:
            raise KeyError("task type")
        index = offset + int(task["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise ClusterError(f"TF_CONFIG={text!r}: not a TensorFlow cluster ({error}); give "
                           '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}.') from None
    for address in addresses:
        _check_address("TF_CONFIG", address)
    if not 0 <= index < len(addresses):
        raise ClusterError(f"TF_CONFIG task index {task['index']}: out of range for {len(addresses)} workers; "
                           f"give 0..{len(addresses) - 1}.")
    return Cluster(len(addresses), index, addresses, "TF_CONFIG")


def cluster_from_env(environ=None):
    """The `Cluster` the environment describes, or None for a single process.

    Raises:
        ClusterError: a count, id or address that is malformed, out of range or missing.
    """
    environ = os.environ if environ is None else environ
    if environ.get("TF_CONFIG"):
        cluster = _from_tf_config(environ["TF_CONFIG"])
        return cluster if cluster.num_processes > 1 else None
    count_name, count = _first(environ, COUNT_VARIABLES)
    address_name, address = _first(environ, ADDRESS_VARIABLES)
    if count is None or (count_name == "SLURM_NTASKS" and address is None):
        if address is not None:
            raise ClusterError(f"{address_name} is set but no process count; set KERAS_DISTRIBUTION_NUM_PROCESSES "
                               "(or WSSS_NUM_PROCESSES, SLURM_NTASKS) to the number of processes.")
        return None
    count = _integer(count_name, count)
    if count < 1:
        raise ClusterError(f"{count_name}={count}: a cluster needs at least 1 process.")
    if count == 1:
        return None
    id_name, process_id = _first(environ, ID_VARIABLES)
    if process_id is None:
        raise ClusterError(f"{count_name}={count} but no process id; set KERAS_DISTRIBUTION_PROCESS_ID (or "
                           "WSSS_PROCESS_ID; SLURM_PROCID and JOB_COMPLETION_INDEX are read too) to 0.."
                           f"{count - 1}.")
    process_id = _integer(id_name, process_id)
    if not 0 <= process_id < count:
        raise ClusterError(f"{id_name}={process_id}: out of range for {count_name}={count}; give 0..{count - 1}.")
    if address is None:
        raise ClusterError(f"{count_name}={count}: no coordinator; set WSSS_COORDINATOR=host:port of process 0 "
                           "(or KERAS_DISTRIBUTION_JOB_ADDRESSES to every process's host:port).")
    if address_name == "WSSS_COORDINATOR":
        host, _, port = _check_address(address_name, address).rpartition(":")
        addresses = tuple(f"{host}:{int(port) + index}" for index in range(count))
    else:
        addresses = tuple(_check_address(address_name, part.strip()) for part in address.split(",") if part.strip())
        if len(addresses) == 1:
            host, _, port = addresses[0].rpartition(":")
            addresses = tuple(f"{host}:{int(port) + index}" for index in range(count))
        elif len(addresses) != count:
            raise ClusterError(f"{address_name} names {len(addresses)} addresses but {count_name}={count}; give one "
                               "host:port per process (or only the coordinator's).")
    return Cluster(count, process_id, addresses, f"{count_name}, {id_name}, {address_name}")


def cluster_timeout(environ=None):
    """Seconds to wait for the coordinator and the other processes (WSSS_CLUSTER_TIMEOUT)."""
    environ = os.environ if environ is None else environ
    value = environ.get(TIMEOUT_VARIABLE)
    if value in (None, ""):
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1
    if seconds <= 0:
        raise ClusterError(f"{TIMEOUT_VARIABLE}={value!r}: give the seconds to wait for the other processes "
                           f"(a number > 0; default {DEFAULT_TIMEOUT}).")
    return seconds


def wait_for_coordinator(cluster, timeout, sleep=0.2):
    """Until process 0's address accepts a connection; ClusterError after `timeout` seconds.
    Process 0 does not wait (it is the coordinator)."""
    if cluster.is_chief:
        return
    host, _, port = cluster.coordinator.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=min(5.0, timeout)):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise ClusterError(
                    f"process {cluster.process_id} of {cluster.num_processes}: coordinator {cluster.coordinator} "
                    f"(from {cluster.source}) unreachable for {timeout:.0f} s ({error}); start process 0 there, fix "
                    f"the address, or raise {TIMEOUT_VARIABLE}.") from None
            time.sleep(sleep)


def recipe_digest(*parts):
    """A short hash of what must be the same in every process (the recipe, steps, batch)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def check_batch(global_batch, total_devices, where):
    """The global batch must split evenly over all devices of all processes."""
    if global_batch % total_devices:
        lower, upper = global_batch // total_devices * total_devices, (global_batch // total_devices + 1) * total_devices
        sizes = " or ".join(str(size) for size in (lower, upper) if size > 0)
        raise ClusterError(f"{where}: the global batch_size {global_batch} does not split over {total_devices} devices "
                           f"of all processes; set batch_size to a multiple of {total_devices} ({sizes}).")


def free_port(host="127.0.0.1"):
    """A port free on `host` now (for tests and `wsss launch` without --port)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
