"""Three "hosts" on one machine that share nothing but Redis and the bucket (issue 20).

Each host is a set of processes with its own directory (HOME, TMPDIR, caches, DIFFV2S_STORAGE_DIR) and,
when the tests run as root, its own Linux user: the directory is mode 0700 and owned by that user, and
every process runs with umask 077, so a host that opens a path another host wrote fails with EACCES
(whatever opens it: Python, PyAV's C code, ffmpeg). A second, explicit check: every process imports an
audit hook (a `sitecustomize` on PYTHONPATH, these processes only) that logs each path it opens, lists,
creates, renames or removes; `cross_host_paths` then names any path under another host's directory.
The audit hook sees what Python opens, not what C libraries open: the separate users are the primary
check, the log says which path was touched.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import site
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Numeric ids with no /etc/passwd entry: nothing on the machine is owned by them but what a host makes.
BASE_ID = 47200
AUDIT_ENV = "DIFFV2S_TEST_AUDIT_DIR"

# Imported by every host process before anything else (PYTHONPATH). One line per event: the event, "w"
# when it may write, and the absolute path(s). os.write raises no audit event, so the hook never recurses.
SITECUSTOMIZE = """\
import os
import sys

_dir = os.environ.get("DIFFV2S_TEST_AUDIT_DIR")
if _dir:
    _fd = os.open(
        os.path.join(_dir, "audit-%d.log" % os.getpid()), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
    )
    _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    _PATH_EVENTS = {
        "os.listdir", "os.scandir", "os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
        "os.truncate", "os.utime", "os.rename", "os.link", "os.symlink", "shutil.copyfile",
        "shutil.copymode", "shutil.copystat", "shutil.rmtree", "shutil.move",
    }
    _WRITING = {"os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate", "os.utime",
                "os.rename", "os.link", "os.symlink", "shutil.rmtree", "shutil.move"}

    def _path(p):
        if p is None or isinstance(p, int):
            return None
        return os.path.abspath(os.fsdecode(p))

    def _hook(event, args):
        try:
            if event == "open":
                path, mode, flags = args
                path = _path(path)
                writes = bool(set(mode or "") & set("wax+")) or bool((flags or 0) & _WRITE_FLAGS)
                paths = [path]
            elif event in _PATH_EVENTS:
                paths = [_path(a) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
                writes = event in _WRITING or event == "shutil.copyfile"
            else:
                return
            for p in paths:
                if p is not None:
                    line = "%s\\t%s\\t%s\\n" % (event, "w" if writes else "r", p)
                    os.write(_fd, line.encode("utf-8", "surrogateescape"))
        except Exception:
            pass

    sys.addaudithook(_hook)
"""


@dataclass
class Host:
    """One host: its user (uid == gid; None when the tests cannot switch users) and its directory."""

    name: str
    root: Path
    uid: int | None

    @property
    def audit(self) -> Path:
        return self.root / "audit"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def scratch(self, name: str = "scratch") -> Path:
        return self.root / name

    def env(self, base: dict[str, str], site: Path) -> dict[str, str]:
        """`base` plus this host's own HOME, TMPDIR, caches and audit log."""
        pythonpath = os.pathsep.join(p for p in (str(site), base.get("PYTHONPATH", "")) if p)
        return base | {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "TMPDIR": str(self.tmp),
            "XDG_CACHE_HOME": str(self.home / ".cache"),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "MPLCONFIGDIR": str(self.home / ".config" / "matplotlib"),
            "TORCH_HOME": str(self.home / ".cache" / "torch"),
            "NUMBA_CACHE_DIR": str(self.home / ".cache" / "numba"),
            "PYTHONPATH": pythonpath,
            # The repository and the venv belong to root: no host writes bytecode (or anything) there.
            "PYTHONDONTWRITEBYTECODE": "1",
            AUDIT_ENV: str(self.audit),
        }

    def popen_user(self) -> dict[str, object]:
        """Popen keywords that run a process as this host (its user, no supplementary group, umask 077)."""
        ids: dict[str, object] = {"umask": 0o077}
        if self.uid is not None:
            ids |= {"user": self.uid, "group": self.uid, "extra_groups": []}
        return ids


def can_switch_users() -> bool:
    """Whether the hosts can run as their own users: root, and the code they run (this checkout and the
    venv's packages) reachable by other users. A checkout inside a private directory (`mktemp -d` makes
    it 0700) cannot be run as another uid; the hosts then share the test's user and only the audit-log
    checks apply, as when the test does not run as root."""
    return (
        os.geteuid() == 0
        and _traversable_by_all(REPO)
        and _traversable_by_all(Path(site.getsitepackages()[0]))
    )


def _traversable_by_all(path: Path) -> bool:
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in [path, *path.parents])


def _executable_by_all(path: Path) -> bool:
    real = Path(os.path.realpath(path))
    return _traversable_by_all(real.parent) and bool(os.stat(real).st_mode & stat.S_IXOTH)


def host_interpreter(root: Path) -> str:
    """A Python every host's user can run, with the running venv's packages: the venv's own when others
    may execute it; else (an interpreter under /root, such as pyenv's) a venv in `root` of the system
    Python of the same version whose site-packages is the running venv's (same packages, same code)."""
    if _executable_by_all(Path(sys.executable)):
        return sys.executable
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base = shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")
    assert base is not None and _executable_by_all(Path(base)), (
        f"no {version} that other users can run; the hosts cannot run as their own users"
    )
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True, mode=0o755)
    (venv / "bin" / "python").symlink_to(base)
    (venv / "pyvenv.cfg").write_text(f"home = {Path(base).parent}\ninclude-system-site-packages = false\n")
    (venv / "lib" / version).mkdir(parents=True, mode=0o755)
    (venv / "lib" / version / "site-packages").symlink_to(site.getsitepackages()[0])
    for d in (venv, venv / "lib"):
        d.chmod(0o755)
    return str(venv / "bin" / "python")


@dataclass
class Machine:
    """The hosts' common parent (root's, mode 0711: others may pass through, not list), the Python the
    hosts run and the hosts."""

    root: Path
    site: Path
    python: str = sys.executable
    hosts: dict[str, Host] = field(default_factory=dict)

    def cleanup(self) -> None:
        subprocess.run(["rm", "-rf", str(self.root)], check=False)


def make_machine(names: Iterable[str]) -> Machine:
    """A parent directory and one directory per host (HOME, TMPDIR, audit log dir), each owned by the
    host's user and mode 0700. The sitecustomize with the audit hook is root's, readable by all."""
    switch = can_switch_users()
    parent = Path("/tmp") if switch else Path(tempfile.gettempdir())
    root = Path(tempfile.mkdtemp(prefix="diffv2s-hosts-", dir=parent))
    root.chmod(0o711)
    if switch:
        assert _traversable_by_all(root), f"{root}: every parent must be searchable by other users"
    site = root / "site"
    site.mkdir(mode=0o755)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (site / "sitecustomize.py").chmod(0o644)
    machine = Machine(root, site, host_interpreter(root) if switch else sys.executable)
    for i, name in enumerate(names):
        uid = BASE_ID + i if switch else None
        if uid is not None:
            try:
                taken = pwd.getpwuid(uid).pw_name
            except KeyError:
                taken = None
            assert taken is None, f"uid {uid} belongs to {taken}; the test needs ids nobody uses"
        host = Host(name, root / name, uid)
        for d in (host.root, host.home, host.tmp, host.audit):
            d.mkdir(mode=0o700)
            if uid is not None:
                os.chown(d, uid, uid)
        machine.hosts[name] = host
    return machine


@dataclass
class Proc:
    name: str
    host: Host
    popen: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    def tail(self, n: int = 40) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return f"--- {self.name} on {self.host.name} (rc={self.popen.poll()}) ---\n" + "\n".join(lines[-n:])


def start(name: str, host: Host, args: list[str], env: dict[str, str], logdir: Path) -> Proc:
    """A process of `host`: its user and umask, its environment; output to a log the test owns."""
    log = logdir / f"{name}.log"
    with open(log, "wb") as fh:
        popen = subprocess.Popen(  # type: ignore[call-overload]
            args,
            cwd=REPO,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **host.popen_user(),
        )
    return Proc(name, host, popen, log)


def stop(proc: Proc, timeout: float = 60.0) -> None:
    if proc.popen.poll() is None:
        proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(10)


def proc_ids(pid: int) -> tuple[int, int, str]:
    """(real uid, real gid, umask) of a running process, from /proc."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0]), fields.get("Umask", "?").strip()


@dataclass(frozen=True)
class Access:
    host: str
    event: str
    mode: str
    path: str
    log: str

    def __str__(self) -> str:
        return f"{self.host}: {self.event} {self.mode} {self.path} ({self.log})"


def audit_records(host: Host) -> Iterator[Access]:
    for log in sorted(host.audit.glob("audit-*.log")):
        with open(log, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                event, mode, path = line.rstrip("\n").split("\t", 2)
                yield Access(host.name, event, mode, path, log.name)


def _under(path: str, root: Path) -> bool:
    real = os.path.realpath(path)
    return any(p == str(root) or p.startswith(f"{root}/") for p in (path, real))


def cross_host_paths(machine: Machine, names: Iterable[str] | None = None) -> list[Access]:
    """Every path one host's processes touched under another host's directory."""
    out = []
    for name in names or machine.hosts:
        host = machine.hosts[name]
        others = [h.root for h in machine.hosts.values() if h is not host]
        out += [a for a in audit_records(host) if any(_under(a.path, r) for r in others)]
    return out


# Writable places every user shares: a host that writes there shares a disk with the others.
SHARED_WRITABLE = (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"))
# What a process may open for writing outside its own directory.
DEVICES = ("/dev/null", "/dev/tty", "/dev/urandom", "/dev/random")


def writes_outside_own_dir(machine: Machine) -> list[Access]:
    """Paths a host's processes opened for writing (or created, renamed, removed) outside its directory."""
    out = []
    for host in machine.hosts.values():
        for a in audit_records(host):
            if a.mode == "w" and not _under(a.path, host.root) and a.path not in DEVICES:
                out.append(a)
    return out


def files_of_hosts_in_shared_places(machine: Machine) -> list[str]:
    """Entries of /tmp, /var/tmp and /dev/shm owned by a host's user (outside the hosts' parent): what any
    process of a host created there, C code included. Only meaningful with separate users."""
    uids = {h.uid for h in machine.hosts.values() if h.uid is not None}
    found = []
    for place in SHARED_WRITABLE:
        if not place.is_dir():
            continue
        for entry in place.iterdir():
            try:
                if entry.lstat().st_uid in uids and entry != machine.root:
                    found.append(str(entry))
            except FileNotFoundError:
                pass
    return found


def python_as(
    machine: Machine, host: Host, code: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run `python -c code` as a process of `host` (the negative checks)."""
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [machine.python, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        **host.popen_user(),
    )
