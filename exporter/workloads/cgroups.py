"""The workload cgroups of the node, kept up to date by inotify, and the CPU time of each, read every tick.

The kernel accounts CPU per cgroup, hierarchically and including tasks that have exited, so one read per
workload cgroup replaces a sweep of every process and catches processes shorter than a tick. cgroup v2 gives
`cpu.stat usage_usec`; v1 (and hybrid hosts, where container runtimes account in v1) gives `cpuacct.usage`
in ns. Reads go through fds held across ticks (within the fd budget); fds of cgroups that disappear are closed.

The tree is listed once; after that only inotify events (a child cgroup created, removed or renamed) change it,
so a tick lists no directory whose membership did not change and classifies a path once. A full rescan runs
every `rescan_s` as a safety net, after an event-queue overflow, and every tick where inotify is unavailable.

Hostile trees stay bounded: the workload hierarchies (kubepods, machine, system) are listed first and have their
own directory limit, so a flood elsewhere cannot push pods past it; a delegated subtree (a directory owned by
another user, such as `user@UID.service`) may add at most `MAX_DELEGATED_DIRS` directories and
`MAX_DELEGATED_WORKLOADS` workloads, and its cgroups are only reported once they have used CPU.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from exporter.sysfs import UNLIMITED, FdBudget, HeldFile
from exporter.workloads import inotify
from exporter.workloads.classify import Classified, classify, is_helper, may_hold_workloads

log = logging.getLogger(__name__)

MAX_DIRS = 50_000  # in the workload hierarchies: a node with far more cgroups is not a node we can follow
MAX_OTHER_DIRS = 10_000  # everywhere else together (user.slice, init.scope, ...): a flood there stays there
MAX_DEPTH = 32
MAX_DELEGATED_DIRS = 1_000  # per delegated subtree (one user's systemd, a rootless runtime)
MAX_DELEGATED_WORKLOADS = 100
RESCAN_S = 300.0  # full rescan, the safety net under inotify
# Listed first, in this order, so that nothing else can take the directory budget from them.
_FIRST = ("kubepods", "machine.slice", "system.slice")
_V1_CPUACCT = ("cpu,cpuacct", "cpuacct,cpu", "cpuacct")


@dataclass(frozen=True, slots=True)
class Hierarchy:
    root: Path
    stat_file: str  # cpu.stat (µs) or cpuacct.usage (ns)


@dataclass(frozen=True, slots=True)
class Layout:
    version: str  # v2 | v1 | hybrid | none
    hierarchies: tuple[Hierarchy, ...]  # walked in this order; the first to have a path wins it

    @property
    def root(self) -> Path:
        return self.hierarchies[0].root if self.hierarchies else Path()


def detect_layout(cgroup_root: Path) -> Layout:
    """Pure v2: the root. v1: the cpuacct hierarchy. Hybrid: both the unified hierarchy (where systemd keeps
    its units) and the v1 cpuacct one (where cgroupfs-driver runtimes put containers)."""
    if (cgroup_root / "cgroup.controllers").exists():
        return Layout("v2", (Hierarchy(cgroup_root, "cpu.stat"),))
    v1 = next(
        (
            Hierarchy(cgroup_root / name, "cpuacct.usage")
            for name in _V1_CPUACCT
            if (cgroup_root / name / "cpuacct.usage").exists()
        ),
        None,
    )
    if (cgroup_root / "unified" / "cgroup.controllers").exists():
        unified = Hierarchy(cgroup_root / "unified", "cpu.stat")
        return Layout("hybrid", (unified, v1) if v1 else (unified,))
    if v1 is not None:
        return Layout("v1", (v1,))
    return Layout("none", ())


def parse_usage_us(data: bytes, stat_file: str) -> int:
    """CPU time in µs from cpu.stat (`usage_usec N` line) or cpuacct.usage (ns); ValueError if malformed."""
    if data.startswith(b"usage_usec "):  # the kernel writes it first
        end = data.find(b"\n")
        usage = int(data[11:end] if end > 0 else data[11:])
        if usage < 0:
            raise ValueError("negative usage_usec")
        return usage
    if stat_file == "cpuacct.usage":
        value = int(data)
        if value < 0:
            raise ValueError("negative cpuacct.usage")
        return value // 1000
    for line in data.split(b"\n"):
        key, _, text = line.partition(b" ")
        if key == b"usage_usec":
            usage = int(text)
            if usage < 0:
                raise ValueError("negative usage_usec")
            return usage
    raise ValueError("cpu.stat has no usage_usec line")


@dataclass(slots=True)  # not frozen: thousands are made per tick, and a frozen dataclass is 3x slower to make
class CgroupUsage:
    path: str  # relative to the hierarchy root, '/'-joined (as label-safe text)
    components: tuple[str, ...]
    workload: Classified
    usage_us: int
    identity: tuple[int, int] | None = None  # (hierarchy, inode): kept through renames, new when recreated
    born: bool = True  # appeared since a complete view of its parent: all of its CPU time is new


def _label_safe(name: str) -> str:
    """Directory names are bytes; undecodable ones become U+FFFD rather than breaking the exposition."""
    return os.fsencode(name).decode("utf-8", "replace")


def _priority(name: str) -> tuple[int, str]:
    return next((i for i, prefix in enumerate(_FIRST) if name.startswith(prefix)), len(_FIRST)), name


@dataclass(slots=True)
class _Delegation:
    """A subtree another user may fill: what it has added so far. A workload's slot is held for `hold_s` after
    it goes (its series stays exported for the workload TTL), so churn cannot multiply the series either."""

    path: str
    dirs: int = 0
    workloads: int = 0
    refused: int = 0
    released: deque[float] = field(default_factory=deque)  # when slots of workloads that went were freed

    def free_slots(self, now: float, hold_s: float) -> None:
        while self.released and now - self.released[0] >= hold_s:
            self.released.popleft()
            self.workloads -= 1


@dataclass(slots=True)
class _Group:
    """Directories tracked in a group of root subtrees, against its limit."""

    limit: int
    dirs: int = 0


@dataclass(slots=True, eq=False)
class _Node:
    """A cgroup directory that is tracked: a workload, or a directory that may hold workloads (or both)."""

    path: str
    components: tuple[str, ...]
    hierarchy: int
    inode: int
    workload: Classified | None
    walk: bool  # its children are tracked (and watched)
    delegation: _Delegation | None
    group: _Group | None = None
    born: bool = False
    wd: int = -1
    complete: bool = False  # every child was taken at its last listing
    children: dict[str, _Node] = field(default_factory=dict)
    stat: HeldFile | None = None
    relative: str = ""  # its path below the hierarchy root, '/'-joined: the same string object every tick
    identity: tuple[int, int] = (0, 0)  # (hierarchy, inode)
    fd: int = -1  # the held fd of its CPU file, for the inline read (-1: none, or read open-read-close)
    last: CgroupUsage | None = None  # its last reading, handed out again while its CPU time does not move


class CgroupTree:
    """The workload cgroups of the node's hierarchies; `read()` brings the tree up to date and returns their
    cumulative CPU time."""

    def __init__(
        self,
        cgroup_root: Path,
        budget: FdBudget = UNLIMITED,
        watch: bool = True,
        rescan_s: float = RESCAN_S,
        hold_s: float = 600.0,
    ) -> None:
        self.layout = detect_layout(cgroup_root)
        self.budget = budget
        self.rescan_s = rescan_s
        self.hold_s = hold_s  # the workload TTL: how long a delegated workload's slot stays taken after it goes
        self._now = time.monotonic()
        self.malformed_reads = 0
        self.truncated_walks = 0  # listings cut short by the directory limit or a delegated subtree's cap
        self.full_walks = 0
        self.ended: list[tuple[int, int]] = []  # identities of cgroups known gone since the last read
        self._workload_dirs, self._other_dirs = _Group(MAX_DIRS), _Group(MAX_OTHER_DIRS)
        self._roots = [_Node(str(h.root), (), i, 0, None, True, None) for i, h in enumerate(self.layout.hierarchies)]
        self._by_wd: dict[int, _Node] = {}
        self._workloads: dict[str, _Node] = {}  # by filesystem path
        self._last_full = 0.0
        self._inotify: inotify.Inotify | None = None
        self._warned: set[str] = set()
        if self.layout.version == "none":
            log.warning("no cgroup hierarchy with CPU accounting under %s: workloads are not measured", cgroup_root)
            return
        if watch:
            try:
                self._inotify = inotify.Inotify()
            except OSError as exc:
                self._once("inotify", "inotify unavailable (%s): the cgroup tree is rescanned every tick", exc)
        self._full_walk(time.monotonic())
        for node in self._walked():
            node.born = False  # the first listing is a baseline, not births

    @property
    def watching(self) -> bool:
        return self._inotify is not None

    # --- keeping the tree up to date --------------------------------------------------------------------

    def update(self, now: float) -> None:
        """Apply what changed since the last call: inotify events, or a full rescan when they cannot be
        trusted (no inotify, queue overflow) or the safety-net period has passed."""
        self._now = now
        if self._inotify is None or now - self._last_full >= self.rescan_s:
            self._full_walk(now)
            return
        try:
            events = self._inotify.read()
        except OSError as exc:
            self._stop_watching(f"reading inotify events failed ({exc})")
            self._full_walk(now)
            return
        for event in events:
            if event.mask & inotify.IN_Q_OVERFLOW:
                self._once("overflow", "inotify event queue overflowed: rescanning the cgroup tree")
                self._full_walk(now)
                return
            parent = self._by_wd.get(event.wd)
            if parent is None or not event.mask & inotify.IN_ISDIR:
                continue
            name = _label_safe(os.fsdecode(event.name))
            if event.mask & (inotify.IN_DELETE | inotify.IN_MOVED_FROM):
                gone = parent.children.pop(name, None)
                if gone is not None:
                    self._drop(gone)
            elif event.mask & (inotify.IN_CREATE | inotify.IN_MOVED_TO) and name not in parent.children:
                self._add_child(parent, os.fsdecode(event.name), born=bool(event.mask & inotify.IN_CREATE))

    def _full_walk(self, now: float) -> None:
        self.full_walks += 1
        self._last_full = now
        if self._inotify is not None:
            self._inotify.read()  # what happened before this listing is in it
        for root in self._roots:
            self._sync(root)

    def _sync(self, node: _Node) -> None:
        """List `node` and, below it, every walked directory: add the children that appeared (births, if the
        last listing was complete), drop those gone."""
        stack = [node]
        while stack:
            directory = stack.pop()
            if directory.wd < 0 and self._inotify is not None:
                self._watch(directory)
            names = self._list(directory)
            if names is None:
                continue
            for name in directory.children.keys() - {_label_safe(n) for n in names}:
                self._drop(directory.children.pop(name))
            # A child not there at the last complete listing was born since (and all below a new directory).
            born = directory.complete or directory.born
            directory.complete = True
            for raw in sorted(names, key=_priority) if not directory.components else names:
                child = directory.children.get(_label_safe(raw))
                if child is None:
                    child = self._add_child(directory, raw, born=born, recurse=False)
                if child is not None and child.walk:
                    stack.append(child)

    def _list(self, directory: _Node) -> list[str] | None:
        try:
            with os.scandir(directory.path) as listing:
                return [e.name for e in listing if e.is_dir(follow_symlinks=False)]
        except OSError:
            return None  # removed mid-walk, or unreadable: its parent's listing or event will say

    def _add_child(self, parent: _Node, raw: str, born: bool, recurse: bool = True) -> _Node | None:
        """Track a new child directory (and, with `recurse`, what is already below it)."""
        name = _label_safe(raw)
        if is_helper(name):
            return None
        components = (*parent.components, name)
        workload = classify(components)
        walk = may_hold_workloads(components, workload) and len(components) < MAX_DEPTH
        if workload is None and not walk:
            return None
        path = os.path.join(parent.path, raw)
        try:
            info = os.lstat(path)
        except OSError:
            return None
        delegation = parent.delegation
        if delegation is None and info.st_uid != 0:
            delegation = _Delegation(path)  # another user owns it: everything below may be theirs to create
        group = parent.group
        if group is None:  # a child of a hierarchy's root: the workload hierarchies never share with the rest
            group = self._workload_dirs if _priority(name)[0] < len(_FIRST) else self._other_dirs
        if not self._room(parent, group, delegation, workload is not None):
            return None
        node = _Node(path, components, parent.hierarchy, info.st_ino, workload, walk, delegation, group, born=born)
        node.relative, node.identity = "/".join(components), (parent.hierarchy, info.st_ino)
        parent.children[name] = node
        if workload is not None:
            self._workloads[path] = node
        if walk and recurse:
            self._sync(node)
        return node

    def _room(self, parent: _Node, group: _Group, delegation: _Delegation | None, is_workload: bool) -> bool:
        if group.dirs >= group.limit:
            parent.complete = False
            self.truncated_walks += 1
            self._once(
                f"limit {group.limit}",
                "more than %d cgroup directories under %s: the rest are measured as the workload above them",
                group.limit,
                "kubepods, machine.slice and system.slice" if group is self._workload_dirs else "the other slices",
            )
            return False
        if delegation is not None:
            delegation.free_slots(self._now, self.hold_s)
            if delegation.dirs >= MAX_DELEGATED_DIRS or (
                is_workload and delegation.workloads >= MAX_DELEGATED_WORKLOADS
            ):
                parent.complete = False
                delegation.refused += 1
                self.truncated_walks += delegation.refused == 1
                self._once(
                    delegation.path,
                    "delegated cgroup subtree %s holds more than %d directories or %d workloads: the rest of it "
                    "is measured as the workload above it",
                    delegation.path,
                    MAX_DELEGATED_DIRS,
                    MAX_DELEGATED_WORKLOADS,
                )
                return False
            delegation.dirs += 1
            delegation.workloads += is_workload
        group.dirs += 1
        return True

    def _watch(self, directory: _Node) -> None:
        assert self._inotify is not None
        try:
            directory.wd = self._inotify.watch(directory.path)
        except OSError as exc:
            # Out of watches (fs.inotify.max_user_watches) or the directory went: events cannot be trusted.
            if os.path.isdir(directory.path):
                self._stop_watching(f"cannot watch {directory.path} ({exc.strerror or exc})")
            return
        self._by_wd[directory.wd] = directory

    def _stop_watching(self, why: str) -> None:
        self._once("inotify", "%s: the cgroup tree is rescanned every tick from now on", why)
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        for node in self._walked():
            node.wd = -1
        self._by_wd.clear()

    def _drop(self, node: _Node) -> None:
        """Forget a subtree that is gone (its fds closed, its watches removed)."""
        stack = [node]
        while stack:
            gone = stack.pop()
            stack.extend(gone.children.values())
            if gone.group is not None:
                gone.group.dirs -= 1
            if gone.delegation is not None:
                gone.delegation.dirs -= 1
                if gone.workload is not None:
                    gone.delegation.released.append(self._now)
            if gone.workload is not None:
                self._workloads.pop(gone.path, None)
                self.ended.append((gone.hierarchy, gone.inode))
            if gone.stat is not None:
                gone.stat.close()
                gone.stat, gone.fd = None, -1
            if gone.wd >= 0:
                self._by_wd.pop(gone.wd, None)
                if self._inotify is not None:
                    self._inotify.unwatch(gone.wd)

    def _walked(self) -> Iterator[_Node]:
        stack = list(self._roots)
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def _once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    # --- reading ------------------------------------------------------------------------------------------

    def read(self, now: float | None = None) -> list[CgroupUsage]:
        """Bring the tree up to date, then the cumulative CPU time of every workload cgroup (in a delegated
        subtree, of those that have used CPU).
        `ended` lists the cgroups known to be gone since the previous read."""
        self.ended = []
        self.update(time.monotonic() if now is None else now)
        usages: list[CgroupUsage] = []
        taken: set[tuple[str, ...]] = set()
        stat_files = [h.stat_file for h in self.layout.hierarchies]
        nodes: Iterable[_Node] = self._workloads.values()
        hybrid = len(self._roots) > 1
        if hybrid:  # a path in both hierarchies is read from the first
            nodes = sorted(nodes, key=lambda n: n.hierarchy)
        pread = os.pread
        for node in nodes:
            if hybrid:
                if node.components in taken:
                    continue
                taken.add(node.components)
            usage: int | None = None
            if node.fd >= 0:  # the common case, inline: one pread of `usage_usec N\n...`
                try:
                    data = pread(node.fd, 4096, 0)
                    end = data.find(b"\n")
                    if end > 11 and data.startswith(b"usage_usec ") and len(data) < 4096:
                        usage = int(data[11:end])
                except (OSError, ValueError):
                    usage = None
            if usage is None or usage < 0:
                usage = self._read(node, stat_files[node.hierarchy])
            if usage is None:
                continue
            if usage == 0 and node.delegation is not None:
                # Another user's cgroup that never used CPU is no workload yet (empty scopes, a flood of them).
                node.born = True  # seen at zero: whatever it uses from now on is new
            else:
                assert node.workload is not None
                last = node.last
                if (  # an idle cgroup (a pause container): the same reading as last tick
                    last is None
                    or last.usage_us != usage
                    or node.born
                    or last.born
                    or last.path is not node.relative
                    or last.workload is not node.workload
                ):
                    last = node.last = CgroupUsage(
                        node.relative, node.components, node.workload, usage, node.identity, node.born
                    )
                usages.append(last)
                node.born = False
        return usages

    def _read(self, node: _Node, stat_file: str) -> int | None:
        held = node.stat
        try:
            if held is None:
                held = node.stat = HeldFile(os.path.join(node.path, stat_file), self.budget, "cgroups")
                node.fd = held.fd
            return parse_usage_us(held.read(), stat_file)
        except OSError:
            # Removed between its event and the read: it simply is not there this tick.
            if held is not None:
                node.stat, node.fd = None, -1
                held.close()
            return None
        except ValueError:
            self.malformed_reads += 1
            return None

    def close(self) -> None:
        for node in self._workloads.values():
            if node.stat is not None:
                node.stat.close()
                node.stat, node.fd = None, -1
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
