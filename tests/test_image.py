"""The container image: `docker build .` of a checkout by a real Docker engine (and `podman build .` by
Debian's Podman), run the way the DaemonSet runs it (read-only root, every capability dropped,
no-new-privileges, UID 0, host trees mounted read-only under /host), it measures RAPL and names pods from the
kubelet's log directories, answers `wattlens check` (the command the chart's NOTES give), and stops cleanly.

No registry is reachable in CI, so the test starts its own dockerd (a temporary data root, exec root and
socket; no iptables, no bridge), gives Podman a temporary storage root, and imports the base image from the
suite's debootstrap tree (tests/rootfs.py). Builds have no network either: the build context is the checkout's
files (what `git ls-files` lists, as a clone has them) plus dist/wheels with the dependencies' and the build
backend's wheels for the base image's Python, passed as WHEELS. wattlens' own wheel is built inside the image
from the source tree; the Podman-built image is then loaded into the Docker engine and runs the same tests.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from helpers import REPO, python_with_pip, require

import exporter

pytestmark = pytest.mark.slow

DOCKER = "/usr/bin/docker"  # Debian's client, the same version as the engine (docker.io)
BASE_TAG = "localhost/wattlens-base:bookworm"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IMAGE_TAG = "localhost/wattlens:test"
PODMAN_TAG = "localhost/wattlens:podman"
FIXTURES = REPO / "fixtures"
NODE = FIXTURES / "nodes" / "k8s-systemd-containerd"
LEDGER = ("payments", "ledger-0", "e88b7591-31db-4e32-98dc-b35f94c662cd")  # the pod the test keeps busy
LEDGER_SCOPE = ("kubepods.slice/kubepods-pode88b7591_31db_4e32_98dc_b35f94c662cd.slice/"
                "cri-containerd-f89a6643543bcd04365e52e7c87383f4b1429de17c47571849dc9b34eae3732d.scope")
# Not in the base image: documentation, man pages, translations, apt's caches and lists.
TRIM = ("./usr/share/doc", "./usr/share/man", "./usr/share/info", "./usr/share/locale", "./var/cache/apt/*",
        "./var/lib/apt/lists/*", "./var/log/*", "./dev/*", "./.complete")


@dataclass
class Engine:
    """A dockerd of our own, reachable only through a socket in a temporary directory."""

    root: Path
    process: subprocess.Popen[bytes]

    @property
    def host(self) -> str:
        return f"unix://{self.root / 'docker.sock'}"

    def env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DOCKER_CONFIG": str(self.root / "client"),
                "DOCKER_BUILDKIT": "0", "HOME": str(self.root)}

    def run(self, *args: str, timeout: float = 60, check: bool = True,
            stdin: int | None = None) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([DOCKER, "-H", self.host, *args], stdin=stdin, capture_output=True, text=True,
                             timeout=timeout, env=self.env())
        if check and out.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def log(self) -> str:
        return (self.root / "dockerd.log").read_text(errors="replace")[-4000:]


def _stop_dockerd(engine: Engine) -> None:
    running = engine.run("ps", "-aq", check=False, timeout=30).stdout.split()
    if running:
        engine.run("rm", "-f", *running, check=False, timeout=60)
    if engine.process.poll() is None:
        engine.process.send_signal(signal.SIGTERM)  # dockerd stops the containerd it started, too
        try:
            engine.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(engine.process.pid, signal.SIGKILL)
            engine.process.wait(timeout=10)
    # Mounts a killed engine may have left (overlay layers, container shm) must go before the files can.
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(str(engine.root))), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    require(os.geteuid() == 0, "needs root (a Docker engine of its own)")
    require(shutil.which("dockerd") is not None and Path(DOCKER).exists(),
             "needs Debian's docker.io (dockerd and /usr/bin/docker)")
    # Short: the engine's sockets live in here, and a unix socket path has at most 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="wl-dk-", dir="/tmp"))
    (root / "client").mkdir()
    tag = re.sub(r"[^a-z0-9]", "", root.name)  # containerd namespaces: alphanumerics (mkdtemp may add "_")
    log = (root / "dockerd.log").open("wb")
    process = subprocess.Popen(
        ["dockerd", "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
         "--pidfile", str(root / "dockerd.pid"), "-H", f"unix://{root / 'docker.sock'}",
         "--iptables=false", "--ip-masq=false", "--bridge=none", "--log-level=warn",
         # If the host runs a containerd of its own, keep to our own namespaces in it.
         "--containerd-namespace", tag, "--containerd-plugins-namespace", f"{tag}p"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    engine = Engine(root, process)
    try:
        deadline = time.monotonic() + 60
        while engine.run("version", check=False, timeout=10).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"dockerd did not start:\n{engine.log()}")
            time.sleep(0.2)
        yield engine
    finally:
        try:
            _stop_dockerd(engine)
        finally:
            log.close()
            shutil.rmtree(root, ignore_errors=True)


def _context(context: Path, python_version: str) -> None:
    """The checkout's files (tracked and untracked-but-not-ignored: what a clone plus local edits has) and
    dist/wheels: every dependency (with the `kubernetes` and `otlp` extras the image installs) and the build backend, as
    binary wheels for the base image's CPython on this architecture. No wattlens wheel: the image builds it."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file() or source.is_symlink():
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, context / name, follow_symlinks=False)
    wheels = context / "dist" / "wheels"
    wheels.mkdir(parents=True)
    pip = [python_with_pip(context.parent), "-m", "pip", "--disable-pip-version-check", "-q"]
    arch = platform.machine()
    platforms = [f"--platform={p}_{arch}" for p in ("manylinux_2_28", "manylinux_2_17", "manylinux2014",
                                                    "manylinux_2_12", "manylinux2010", "manylinux_2_5",
                                                    "manylinux1")]
    build_backend = next(r for r in _build_requires() if r.startswith("hatchling"))
    fetched = subprocess.run([*pip, "download", "--only-binary=:all:", f"--python-version={python_version}",
                              "--implementation=cp", *platforms, "--dest", str(wheels), f"{context}[kubernetes,otlp]",
                              build_backend], capture_output=True, text=True, timeout=300)
    assert fetched.returncode == 0, fetched.stderr
    assert not list(wheels.glob("wattlens-*")), "the context must not carry a prebuilt wattlens"


def _build_requires() -> list[str]:
    text = (REPO / "pyproject.toml").read_text()
    block = re.search(r"^\[build-system\]\s*\nrequires = \[([^\]]*)\]", text, re.MULTILINE)
    assert block is not None
    return re.findall(r'"([^"]+)"', block.group(1))


@dataclass
class Built:
    engine: Engine
    image: str
    seconds: dict[str, float]


@pytest.fixture(scope="module")
def base(engine: Engine) -> tuple[Path, str]:
    """The base image imported into the engine, and the build context next to it."""
    require(shutil.which("debootstrap") is not None, "needs debootstrap (the base image's root filesystem)")
    from rootfs import debian_rootfs

    rootfs = debian_rootfs()  # cached and shared: read here (tar), never changed
    python_version = os.readlink(rootfs / "usr" / "bin" / "python3").removeprefix("python")
    assert re.fullmatch(r"3\.\d+", python_version), python_version
    _import_base(rootfs, [DOCKER, "-H", engine.host], engine.env())
    context = engine.root / "context"
    context.mkdir()
    _context(context, python_version)
    # What .dockerignore is for (a checkout's .venv, .git): 32 MiB the engine must never get.
    with (context / "not-for-the-engine.bin").open("wb") as decoy:
        decoy.truncate(32 * 2**20)
    return rootfs, str(context)


def _import_base(rootfs: Path, client: list[str], env: dict[str, str]) -> None:
    excludes = [f"--exclude={pattern}" for pattern in TRIM]
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", *excludes, "."], stdout=subprocess.PIPE)
    assert tar.stdout is not None
    try:
        # A PATH, as real base images have (an imported tree has no image config).
        out = subprocess.run([*client, "import", "--change", f"ENV PATH={SYSTEM_PATH}", "-", BASE_TAG],
                             stdin=tar.stdout.fileno(), capture_output=True, text=True, timeout=300, env=env)
        assert out.returncode == 0, out.stderr
    finally:
        tar.stdout.close()
        assert tar.wait(timeout=60) == 0


BUILD_ARGS = ("--build-arg", f"BASE={BASE_TAG}", "--build-arg", "WHEELS=dist/wheels")


def _check_build_log(log: str) -> None:
    # The project's wheel was built in the build stage, from the source tree.
    assert re.search(r"Created wheel for wattlens|Successfully built wattlens|Saved /tmp/dist/wattlens-", log), log


@pytest.fixture(scope="module")
def docker_image(engine: Engine, base: tuple[Path, str]) -> Built:
    started = time.monotonic()
    context = base[1]
    # Exactly `docker build .` in the checkout, plus the two offline build arguments.
    built = subprocess.run([DOCKER, "-H", engine.host, "build", "--network", "none", *BUILD_ARGS, "-t", IMAGE_TAG,
                            "."], cwd=context, capture_output=True, text=True, timeout=400, env=engine.env())
    assert built.returncode == 0, built.stdout + built.stderr
    _check_build_log(built.stdout)
    sent = re.search(r"Sending build context to Docker daemon\s+([\d.]+)([kMG]?B)", built.stdout)
    assert sent is not None, built.stdout
    wheels = sum(p.stat().st_size for p in (Path(context) / "dist" / "wheels").iterdir())
    size = float(sent.group(1)) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[sent.group(2)]
    assert size < wheels + 2e6, f"the build context is {sent.group(0)}: .dockerignore lets more in than it should"
    seconds = {"docker build": time.monotonic() - started}
    print(f"\nimage build: {', '.join(f'{k} {v:.1f} s' for k, v in seconds.items())}")
    return Built(engine, IMAGE_TAG, seconds)


@pytest.fixture(scope="module")
def podman_image(engine: Engine, base: tuple[Path, str]) -> Built:
    """`podman build .` with Podman's own storage in a temporary directory; the image is then loaded into the
    Docker engine (docker-archive), where the same tests run it."""
    require(shutil.which("podman") is not None, "needs Debian's podman (apt-get install podman)")
    started = time.monotonic()
    rootfs, context = base
    storage = engine.root / "podman"
    podman = ["podman", "--root", str(storage / "root"), "--runroot", str(storage / "run"),
              "--storage-driver", "overlay", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(storage),
           "XDG_RUNTIME_DIR": str(storage / "xdg"), "CONTAINERS_CONF": str(storage / "containers.conf")}
    (storage / "xdg").mkdir(parents=True)
    (storage / "containers.conf").write_text("")
    try:
        _import_base(rootfs, podman, env)
        built = subprocess.run([*podman, "build", "--network", "none", *BUILD_ARGS, "-t", PODMAN_TAG, "."],
                               cwd=context, capture_output=True, text=True, timeout=400, env=env)
        assert built.returncode == 0, built.stdout + built.stderr
        _check_build_log(built.stdout + built.stderr)
        archive = storage / "image.tar"
        saved = subprocess.run([*podman, "save", "--format", "docker-archive", "-o", str(archive), PODMAN_TAG],
                               capture_output=True, text=True, timeout=300, env=env)
        assert saved.returncode == 0, saved.stderr
        engine.run("load", "-i", str(archive), timeout=300)
    finally:
        subprocess.run([*podman, "system", "reset", "--force"], capture_output=True, timeout=120, env=env)
    seconds = {"podman build + load": time.monotonic() - started}
    print(f"\nimage build: {', '.join(f'{k} {v:.1f} s' for k, v in seconds.items())}")
    return Built(engine, PODMAN_TAG, seconds)


@pytest.fixture(scope="module", params=["docker", "podman"])
def image(request: pytest.FixtureRequest) -> Built:
    return request.getfixturevalue(f"{request.param}_image")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def _samples(text: str, name: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(rf"^({name}\{{[^}}]*\}}) (\S+)$", text, re.MULTILINE)}


def _labels(key: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="([^"]*)"', key))


def _bump(path: Path, edit: re.Pattern[str], amount: int) -> None:
    """Add `amount` to the number the pattern's group 2 matches, in place (same inode, one pwrite), as
    the kernel changes a file a reader holds open."""
    old = path.read_text()
    new = edit.sub(lambda m: f"{m.group(1)}{int(m.group(2)) + amount}", old, count=1)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, new.encode().ljust(len(old.encode())), 0)
    finally:
        os.close(fd)


class BusyNode:
    """Fixture trees that move on: RAPL counters grow (root-only 0400 files, as the kernel makes them) and
    the ledger-0 pod's cgroup burns CPU. Node CPU time is the machine's own /proc/stat, as in a pod."""

    ENERGY = re.compile(r"^()(\d+)")
    USAGE = re.compile(r"^(usage_usec )(\d+)", re.MULTILINE)
    USER = re.compile(r"^(user_usec )(\d+)", re.MULTILINE)

    def __init__(self, root: Path) -> None:
        self.sys = root / "sys"
        self.node = root / "node"
        shutil.copytree(FIXTURES / "sysfs" / "intel-2socket-server", self.sys, symlinks=True)
        (self.sys / "fs" / "cgroup").mkdir(parents=True)  # the mount point of the cgroup tree, as in /sys
        shutil.copytree(NODE, self.node, symlinks=True)
        self.energy = sorted({p.resolve() for p in self.sys.rglob("energy_uj")})
        for path in self.energy:
            path.chmod(0o400)
        scope = self.node / "cgroup" / LEDGER_SCOPE
        self.cgroups = [scope, scope.parent, scope.parent.parent, self.node / "cgroup"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def step(self) -> None:
        for path in self.energy:
            _bump(path, self.ENERGY, 15_000_000)  # 15 J a step per zone
        for path in self.cgroups:
            for pattern in (self.USAGE, self.USER):
                _bump(path / "cpu.stat", pattern, 200_000)  # 0.2 s of CPU, all of it ledger-0's

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.step()

    def __enter__(self) -> BusyNode:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _memory_limit_bytes() -> int:
    daemonset = yaml.safe_load((REPO / "deploy" / "daemonset" / "base" / "daemonset.yaml").read_text())
    limit = daemonset["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    match = re.fullmatch(r"(\d+)(Mi|Gi)", limit)
    assert match, limit
    return int(match.group(1)) * {"Mi": 2**20, "Gi": 2**30}[match.group(2)]


def test_image_is_slim_and_has_no_build_tools(image: Built) -> None:
    engine = image.engine
    info = json.loads(engine.run("image", "inspect", image.image).stdout)[0]
    base = json.loads(engine.run("image", "inspect", BASE_TAG).stdout)[0]
    config = info["Config"]
    assert config["User"] == "0"
    assert f"PATH=/opt/wattlens/bin:{SYSTEM_PATH}" in config["Env"]
    assert config["Entrypoint"] == ["/opt/wattlens/bin/wattlens"]
    assert "9875/tcp" in config["ExposedPorts"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == exporter.__version__
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.source"].startswith("https://github.com/")
    added = info["Size"] - base["Size"]
    # The venv: wattlens, its dependencies, the Kubernetes client and the OTLP exporter (~100 MB); no wheels, no pip
    # cache.
    assert added < 150e6, f"the image adds {added / 1e6:.0f} MB to its base"
    tools = engine.run("run", "--rm", "--network", "none", "--read-only", "--cap-drop", "ALL",
                       "--entrypoint", "/bin/sh", image.image, "-c",
                       f"PATH=/opt/wattlens/bin:{SYSTEM_PATH};"
                       " for t in gcc cc c++ clang make pip pip3; do command -v $t; done;"
                       " ls /tmp/wheels /tmp/dist /src 2>/dev/null;"
                       " /opt/wattlens/bin/python -c 'import pip' 2>/dev/null && echo 'pip module in the venv';"
                       " python3 -c 'import pip' 2>/dev/null && echo 'pip module in the base'; true").stdout
    assert tools == "", f"build tools in the image:\n{tools}"
    version = engine.run("run", "--rm", "--network", "none", "--read-only", "--cap-drop", "ALL", image.image,
                         "--version").stdout
    assert version.split() == ["wattlens", exporter.__version__], version
    engine.run("run", "--rm", "--network", "none", "--read-only", "--cap-drop", "ALL", "--entrypoint",
               "/opt/wattlens/bin/python", image.image, "-c",
               "import opentelemetry.exporter.otlp.proto.http.metric_exporter")  # otlp_endpoint works in the image


def test_image_serves_metrics_read_only_and_stops_cleanly(image: Built, tmp_path: Path) -> None:
    engine = image.engine
    node = BusyNode(tmp_path)
    config = tmp_path / "config"
    config.mkdir()
    # The DaemonSet's own configuration file (the base ConfigMap), unchanged.
    shutil.copy(REPO / "deploy" / "daemonset" / "base" / "wattlens.yaml", config / "wattlens.yaml")
    port = _free_port()
    name = f"wattlens-test-{os.getpid()}"
    ro = [("sys", node.sys, "/host/sys"), ("cgroup", node.node / "cgroup", "/host/sys/fs/cgroup"),
          ("pods", node.node / "log" / "pods", "/host/var/log/pods"),
          ("containers", node.node / "log" / "containers", "/host/var/log/containers"),
          ("config", config, "/etc/wattlens")]
    mounts = [arg for _, source, target in ro for arg in ("--volume", f"{source}:{target}:ro")]
    engine.run("run", "--detach", "--name", name, "--read-only", "--network", "host", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges", *mounts,
               "--env", "WATTLENS_CONFIG=/etc/wattlens/wattlens.yaml", "--env", "NODE_NAME=fixture-node",
               # Only what a test needs on top: a free loopback port (host network) and a fast tick.
               "--env", f"WATTLENS_LISTEN=127.0.0.1:{port}", "--env", "WATTLENS_INTERVAL=0.5", image.image)
    try:
        with node:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if _get(port, "/readyz")[0] == 200:
                        break
                except OSError:
                    pass
                state = json.loads(engine.run("inspect", name).stdout)[0]["State"]
                assert state["Running"], engine.run("logs", name).stderr
                assert time.monotonic() < deadline, "never ready:\n" + engine.run("logs", name).stderr
                time.sleep(0.2)
            # Wait for energy to be measured and attributed (the first ticks only set baselines).
            deadline = time.monotonic() + 60
            while True:
                status, text = _get(port, "/metrics")
                assert status == 200
                package = {k: v for k, v in _samples(text, "wattlens_node_cpu_joules_total").items()
                           if 'zone="package"' in k}
                pods = {k: v for k, v in _samples(text, "wattlens_pod_cpu_joules_total").items()
                        if 'pod="ledger-0"' in k and 'zone="package"' in k}
                if package and pods and min(package.values()) > 0 and min(pods.values()) > 0:
                    break
                assert time.monotonic() < deadline, text
                time.sleep(0.5)
        assert _get(port, "/readyz")[0] == 200
        assert _get(port, "/healthz")[0] == 200
        # The check the chart's NOTES and docs/kubernetes.md give (`kubectl exec daemonset/wattlens -- wattlens
        # check`), in the running container: it finds RAPL through the host mount.
        checked = engine.run("exec", name, "wattlens", "check", "--seconds", "0.5", check=False, timeout=60)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "rapl" in checked.stdout.lower(), checked.stdout

        # RAPL, read through the read-only host mount from root-only files, on both sockets.
        assert {_labels(k)["socket"] for k in package} == {"0", "1"}
        assert all(_labels(k)["source"] == "rapl" and _labels(k)["node"] == "fixture-node" for k in package)
        # Pods and containers are named from the kubelet's log directories, with no API server.
        named = {(_labels(k)["namespace"], _labels(k)["pod"], _labels(k)["uid"])
                 for k in _samples(text, "wattlens_pod_cpu_joules_total")}
        for directory in (node.node / "log" / "pods").iterdir():
            assert tuple(directory.name.split("_")) in named
        containers = {_labels(k)["container"] for k in _samples(text, "wattlens_container_cpu_joules_total")}
        assert {"ledger", "nginx", "php-fpm", "kube-apiserver", "shell"} <= containers
        [ledger] = [k for k in pods if _labels(k)["uid"] == LEDGER[2]]
        assert _labels(ledger)["namespace"] == LEDGER[0]

        # The process really is UID 0 with nothing else: no capability, no-new-privileges, seccomp on.
        pid = json.loads(engine.run("inspect", name).stdout)[0]["State"]["Pid"]
        status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":\t" in line)
        assert status["Uid"].split()[:2] == ["0", "0"]
        for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(status[cap], 16) == 0, (cap, status[cap])
        assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2"
        rss = int(status["VmRSS"].split()[0]) * 1024
        assert rss < _memory_limit_bytes(), f"RSS {rss / 2**20:.0f} MiB is over the DaemonSet's memory limit"
        # ... and cannot write: not its root, not the host's trees.
        for target in ("/opt/wattlens/x", "/tmp/x", "/host/sys/class/powercap/intel-rapl:0/energy_uj",
                       "/host/sys/fs/cgroup/cgroup.procs", "/host/var/log/pods/x"):
            wrote = engine.run("exec", name, "/bin/sh", "-c", f"echo 1 > {target}", check=False)
            assert wrote.returncode != 0 and "Read-only file system" in wrote.stderr, (target, wrote.stderr)

        # docker stop = SIGTERM: it finishes the tick in flight and exits 0, well within the DaemonSet's
        # terminationGracePeriodSeconds.
        started = time.monotonic()
        engine.run("stop", "--time", "10", name, timeout=30)
        took = time.monotonic() - started
        state = json.loads(engine.run("inspect", name).stdout)[0]["State"]
        logs = engine.run("logs", name).stderr
        assert state["ExitCode"] == 0 and not state["OOMKilled"], logs
        assert took < 5, f"docker stop took {took:.1f} s"
        assert "stopped" in logs.splitlines()[-1], logs
        assert "Traceback" not in logs, logs
    finally:
        engine.run("rm", "-f", name, check=False)
