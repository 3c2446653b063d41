"""A real single-node Ray cluster for tests: `ray start --head` on free 127.0.0.1 ports, stopped afterwards.

`ray stop --force` would end every Ray process on the host (other test sessions' clusters too), so `stop`
ends only this cluster's processes: those whose command line names its own temp dir, and their children
(workers, job drivers and the run processes they start).
"""
from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

# A local `ray.init()` writes ~/.ray/auth_token, and a cluster started later with the mode unset turns token
# auth on when it finds one; the tests' cluster and clients say explicitly that it is off.
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class RayCluster:
    """`address` is the dashboard URL that the Job Submission API and `ray_address` take."""

    def __init__(self, num_cpus: int = 2, ray: Path | None = None, wrap: list[str] | None = None,
                 env: dict | None = None):
        """`ray`: the `ray` command (default: this interpreter's); `wrap`: a command line that runs the
        `ray start` line given as its last argument (e.g. in another mount namespace); `env`: added to it."""
        # Short: Ray puts unix sockets under it, and their paths must stay under 108 bytes.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="tlray", dir="/tmp"))
        gcs, dashboard, agent_http, agent_grpc, runtime_env, metrics, client, node_manager, object_manager = \
            _free_ports(9)
        self.gcs_port = gcs
        self.address = f"http://127.0.0.1:{dashboard}"
        self.log = self.temp_dir / "ray-start.log"
        cmd = [str(ray or Path(sys.executable).with_name("ray")), "start", "--head", "--node-ip-address", "127.0.0.1",
               "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
               "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
               "--runtime-env-agent-port", str(runtime_env), "--metrics-export-port", str(metrics),
               "--ray-client-server-port", str(client), "--node-manager-port", str(node_manager),
               "--object-manager-port", str(object_manager), "--num-cpus", str(num_cpus), "--num-gpus", "0",
               "--temp-dir", str(self.temp_dir), "--disable-usage-stats"]
        self.started = time.time()
        if wrap:
            cmd = [*wrap, shlex.join(cmd)]
        with open(self.log, "w") as log:
            done = subprocess.run(cmd, env={**os.environ, **ENV, **(env or {})}, stdout=log,
                                  stderr=subprocess.STDOUT, timeout=180)
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed ({done.returncode}): {self.log.read_text()[-2000:]}")
        self._wait_for_jobs_api()
        self.start_seconds = time.time() - self.started

    def _wait_for_jobs_api(self, timeout_s: float = 120) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.address}/api/jobs/", timeout=2).read()
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Ray dashboard at {self.address} did not answer within {timeout_s}s")

    def processes(self) -> list[psutil.Process]:
        """This cluster's processes: those naming its temp dir or its GCS port (the Ray client server names
        only the latter), and all their descendants."""
        mark, gcs = str(self.temp_dir), f":{self.gcs_port}"
        roots = []
        for p in psutil.process_iter(["cmdline"]):
            if any(mark in part or part.endswith(gcs) for part in p.info["cmdline"] or []):
                roots.append(p)
        found = {p.pid: p for p in roots}
        for p in roots:
            try:
                found.update({c.pid: c for c in p.children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
        return list(found.values())

    def stop(self) -> None:
        procs = self.processes()
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=3)  # the GCS server may ignore SIGTERM
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
