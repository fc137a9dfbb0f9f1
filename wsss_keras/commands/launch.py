"""`wsss launch`: N local processes of one training command, each told which process it is.

Each child gets the variables of its engine: TF_CONFIG (TensorFlow's MultiWorkerMirroredStrategy,
a worker per process on 127.0.0.1:PORT+i) and KERAS_DISTRIBUTION_JOB_ADDRESSES /
KERAS_DISTRIBUTION_NUM_PROCESSES / KERAS_DISTRIBUTION_PROCESS_ID (JAX's distributed runtime,
coordinator 127.0.0.1:PORT), read by `training.cluster`, as SLURM's or a Kubernetes Indexed
Job's are. The launcher waits for all; when one fails it stops the others (they would wait in
their next collective until a timeout) and exits with its status.
"""

import os
import signal
import subprocess
import sys
import threading
import time

import click

ENGINES = ("tensorflow", "jax")
GRACE_SECONDS = 10  # after SIGTERM (which checkpoints at the step's end) before SIGKILL


def child_environment(base, backend, nproc, index, port, host="127.0.0.1"):
    """The environment of process `index` of `nproc`: the base one plus the cluster's variables."""
    from wsss_keras.training.cluster import Cluster

    addresses = tuple(f"{host}:{port + i}" for i in range(nproc))
    env = {key: value for key, value in base.items()
           if key not in ("TF_CONFIG", "SLURM_PROCID", "SLURM_NTASKS", "JOB_COMPLETION_INDEX", "WSSS_COORDINATOR",
                          "WSSS_NUM_PROCESSES", "WSSS_PROCESS_ID")}
    env.update(KERAS_BACKEND=backend, KERAS_DISTRIBUTION_JOB_ADDRESSES=",".join(addresses),
               KERAS_DISTRIBUTION_NUM_PROCESSES=str(nproc), KERAS_DISTRIBUTION_PROCESS_ID=str(index))
    if backend == "tensorflow":
        env["TF_CONFIG"] = Cluster(nproc, index, addresses, "wsss launch").tf_config()
    # One process per device: JAX on a CPU must not split itself into several devices.
    if "xla_force_host_platform_device_count" in env.get("XLA_FLAGS", ""):
        env.pop("XLA_FLAGS")
    return env


def _is_wsss(command):
    head = os.path.basename(command[0])
    return head == "wsss" or (len(command) > 2 and command[1:3] == ["-m", "wsss_keras.cli"])


def check_command(command, backend):
    """Refuse up front what every process would refuse (one line each, N times, otherwise)."""
    from wsss_keras.errors import WSSSError

    if not command:
        raise WSSSError("wsss launch: no command; give one after --, e.g. "
                        "wsss launch --nproc 2 -- wsss train RECIPE --data D --out O --distribute data-parallel")
    if backend not in ENGINES:
        raise WSSSError(f"wsss launch: the {backend} backend trains on one device here; use --backend jax "
                        "(keras.distribution) or --backend tensorflow (tf.distribute) for several processes.")
    if _is_wsss(command):
        words = list(command)
        if "--backend" in words and words.index("--backend") + 1 < len(words) and \
                words[words.index("--backend") + 1] not in ENGINES:
            raise WSSSError(f"wsss launch: the command's --backend {words[words.index('--backend') + 1]} trains on "
                            "one device here; use --backend jax or --backend tensorflow for several processes.")
        joined = " ".join(words)
        if "--distribute data-parallel" not in joined and "--distribute=data-parallel" not in joined:
            raise WSSSError("wsss launch: the command trains without --distribute data-parallel, so every process "
                            "would train alone on the whole batch; add --distribute data-parallel to it.")


def _log_folder(command, logs):
    if logs:
        return logs
    if "--out" in command and command.index("--out") + 1 < len(command):
        return os.path.join(command[command.index("--out") + 1], "launch")
    return "wsss_launch_logs"


def _resolved(command):
    """`wsss ...` runs as this Python's `-m wsss_keras.cli`, whatever is on PATH."""
    if os.path.basename(command[0]) == "wsss":
        return [sys.executable, "-m", "wsss_keras.cli", *command[1:]]
    if command[0] in ("python", "python3"):
        return [sys.executable, *command[1:]]
    return list(command)


def _pump(stream, handle, echo):
    for line in iter(stream.readline, b""):
        handle.write(line)
        handle.flush()
        if echo:
            sys.stdout.buffer.write(line)
            sys.stdout.flush()


def launch(command, nproc, backend, port=None, logs=None, echo=click.echo):
    """Run `command` as `nproc` processes; returns the exit status (0: all succeeded)."""
    from wsss_keras.training.cluster import free_port

    check_command(command, backend)
    port = port or free_port()
    folder = _log_folder(command, logs)
    os.makedirs(folder, exist_ok=True)
    processes, pumps, paths = [], [], []
    for index in range(nproc):
        path = os.path.join(folder, f"process-{index}.log")
        handle = open(path, "wb")  # noqa: SIM115 (open while the process runs)
        child = subprocess.Popen(_resolved(command), env=child_environment(os.environ, backend, nproc, index, port),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        # Process 0's lines also go to this terminal; every process's to its log.
        pump = threading.Thread(target=_pump, args=(child.stdout, handle, index == 0), daemon=True)
        pump.start()
        processes.append(child)
        pumps.append((pump, handle))
        paths.append(path)
    echo(f"[launch] {nproc} processes on 127.0.0.1 (port {port}, {backend}); logs in {folder}/process-<i>.log",
         err=True)

    def forward(number, frame):  # Ctrl-C / SIGTERM: every process checkpoints and stops
        for child in processes:
            if child.poll() is None:
                child.send_signal(number)

    previous = {number: signal.signal(number, forward) for number in (signal.SIGINT, signal.SIGTERM)}
    failed = None
    try:
        while True:
            codes = [child.poll() for child in processes]
            failed = next(((index, code) for index, code in enumerate(codes) if code not in (None, 0)), None)
            if failed is not None or all(code == 0 for code in codes):
                break
            time.sleep(0.2)
        if failed is not None:
            _stop(processes)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for pump, handle in pumps:
            pump.join(timeout=5)
            handle.close()
    if failed is None:
        return 0
    index, code = failed
    echo(f"[launch] process {index} of {nproc} failed (exit status {code}); the others were stopped; its log: "
         f"{paths[index]}", err=True)
    return code if code > 0 else 128 - code  # killed by signal N: 128 + N, as a shell reports it


def _stop(processes):
    for child in processes:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + GRACE_SECONDS
    for child in processes:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def register(cli):
    @cli.command("launch", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
    @click.option("--nproc", required=True, type=click.IntRange(min=1), help="Processes to start on this machine.")
    @click.option("--backend", "engine", type=click.Choice(("tensorflow", "jax", "torch")), default=None,
                  help="Engine of every process [default: wsss --backend, else $KERAS_BACKEND, else tensorflow].")
    @click.option("--port", type=click.IntRange(1, 65535), default=None,
                  help="First port: JAX's coordinator listens there, TensorFlow's worker i on PORT+i [default: a free one].")
    @click.option("--logs", type=click.Path(file_okay=False), default=None,
                  help="Folder of process-<i>.log [default: OUT/launch of the command's --out, else ./wsss_launch_logs].")
    @click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
    @click.pass_context
    def launch_command(ctx, nproc, engine, port, logs, command):
        """Run COMMAND (after --) as NPROC cooperating processes on this machine.

        Example: wsss launch --nproc 2 --backend jax -- wsss train toco_voc --data D --out O --distribute data-parallel

        The recipe's batch_size stays the global batch; each process reads its share. Only process 0
        writes OUT's files. If one process fails, the others are stopped; rerun the same line to resume.
        """
        backend = engine or os.environ.get("KERAS_BACKEND") or "tensorflow"
        code = launch(list(command), nproc, backend, port=port, logs=logs)
        ctx.exit(code)
