"""The one place the hub runs git, always with configuration the hub alone controls.

Everything an agent writes is hostile input (DESIGN.md, "Containment rules").
Git reads configuration, hooks, attributes and ``.git`` files from many places
and some of them name commands, so every invocation here starts from an empty
environment:

- no system or global configuration, ``HOME`` an empty directory;
- ``GIT_CONFIG_COUNT`` pairs, which have command-line scope and so beat every
  file, switch off all that could run a command or enter another repository:
  fsmonitor, hooks, pagers, external diff, credential helpers, submodule
  recursion, the untracked cache;
- ``protocol.allow=never``, with the repository schemes allowed only for the
  fetches and pushes that name a remote;
- ``safe.directory`` naming exactly the repositories in play, never ``*``;
- ``GIT_DIR`` (and ``GIT_WORK_TREE``) given explicitly, with
  ``GIT_CEILING_DIRECTORIES`` set, so no ``.git`` entry is ever discovered.

Git on a repository the hub owns (a mirror, a scratch repository) runs as the
hub. Git on an agent's worktree reads the agent's files, so it runs as the
sandbox user in a bubblewrap jail that root starts and that drops every
privilege before git starts: no network, no capabilities, and only three
paths besides the system: the mirror (read-only), the worktree (read-only)
and the agent's scratch directory, which holds the index and the objects git
writes. A hub that does not run as root is unprivileged already and runs the
same git without the jail.
"""

import functools
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from django.conf import settings

from agents.childprocess import dying_with_parent
from agents.sandboxes.base import SYSTEM_DIRS
from gates.base import HubFault


class WorkspaceError(HubFault):
    """A git operation on an agent's workspace failed; the message is for humans.

    It is the hub's fault, never the agent's: no gate turns it into a rejection.
    """


@dataclass(frozen=True)
class GitResult:
    status: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class AgentWorktree:
    """Where the hub's git finds an agent's worktree; every path here is the hub's choice."""

    work_tree: Path
    git_dir: Path  # <mirror>/worktrees/<name>: the worktree's HEAD, owned by the hub
    mirror: Path  # the common directory: objects and refs, read-only to the jail
    scratch: Path  # the sandbox user's: the index and the objects git writes

    @property
    def index(self) -> Path:
        return self.scratch / "index"

    @property
    def objects(self) -> Path:
        return self.scratch / "objects"


_PATH = "/usr/local/bin:/usr/bin:/bin"
_SCHEMES = ("file", "https", "http", "ssh", "git")
_HUB_CONFIG = (
    ("core.fsmonitor", "false"),
    ("core.hooksPath", "/dev/null"),
    ("core.untrackedCache", "false"),
    ("core.attributesFile", "/dev/null"),
    ("core.pager", "cat"),
    ("core.editor", "false"),
    ("core.askPass", ""),
    ("diff.external", ""),
    ("diff.ignoreSubmodules", "all"),
    ("status.submoduleSummary", "false"),
    ("submodule.recurse", "false"),
    ("fetch.recurseSubmodules", "false"),
    ("push.recurseSubmodules", "no"),
    ("protocol.allow", "never"),
    # A remote's host was vetted by the outbound guard (agents.repositories);
    # a redirect would take git to a host nobody vetted.
    ("http.followRedirects", "false"),
)
# Passed on to fetch and push only: how the operator reaches remotes.
_REMOTE_ENVIRONMENT = (
    "SSH_AUTH_SOCK",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
)


def git_run(
    args: Sequence[str],
    *,
    git_dir: Path | None = None,
    worktree: AgentWorktree | None = None,
    remote: str | None = None,
    stdin: bytes | BinaryIO | None = None,
) -> GitResult:
    """Run ``git args`` on ``git_dir`` as the hub, or on ``worktree`` jailed as the sandbox user.

    ``remote`` (a repository URL or path) is given for a fetch or push only:
    it opens the repository schemes and names a local remote safe.
    """
    if worktree is not None:
        env = _environment(safe=[worktree.work_tree, worktree.git_dir, worktree.mirror])
        env.update(_worktree_environment(worktree))
        if os.geteuid() == 0:
            return _execute(_jailed(worktree, env, args), env={"PATH": _PATH}, stdin=stdin)
        return _execute(["git", *args], env=env, cwd=worktree.work_tree, stdin=stdin)
    if git_dir is None:
        raise ValueError("git_run needs a git_dir or a worktree")
    safe = [git_dir, *_local_remote(remote)]
    env = _environment(safe=safe, remote=remote is not None)
    env.update(GIT_DIR=str(git_dir), GIT_CEILING_DIRECTORIES=str(git_dir.parent))
    if remote is not None:
        env.update({key: os.environ[key] for key in _REMOTE_ENVIRONMENT if key in os.environ})
    return _execute(["git", *args], env=env, cwd=git_home(), stdin=stdin)


def git_home() -> Path:
    """An empty directory of the hub's: HOME and working directory of the hub's own git."""
    home = Path(settings.DATA_DIR) / "githome"
    home.mkdir(mode=0o700, exist_ok=True)
    return home


def _environment(*, safe: list[Path], remote: bool = False) -> dict[str, str]:
    remote_config = str(getattr(settings, "FLOTILLA_GIT_REMOTE_CONFIG", "") or "")
    env = {
        "PATH": _PATH,
        "HOME": str(git_home()),
        "XDG_CONFIG_HOME": str(git_home() / ".config"),
        "LANG": "C",
        "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": remote_config if remote and remote_config else "/dev/null",
        "GIT_ATTR_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_PAGER": "cat",
        "PAGER": "cat",
        "GIT_NO_REPLACE_OBJECTS": "1",
    }
    config = [*_HUB_CONFIG, *(("safe.directory", str(path)) for path in safe)]
    if remote:
        allowed = [scheme for scheme in settings.FLOTILLA_REPOSITORY_SCHEMES if scheme in _SCHEMES]
        config += [(f"protocol.{scheme}.allow", "always") for scheme in allowed]
    if not (remote and remote_config):
        # An empty value empties the list of helpers; the operator's remote
        # configuration file, when there is one, may name its own.
        config.append(("credential.helper", ""))
    env["GIT_CONFIG_COUNT"] = str(len(config))
    for number, (key, value) in enumerate(config):
        env[f"GIT_CONFIG_KEY_{number}"] = key
        env[f"GIT_CONFIG_VALUE_{number}"] = value
    return env


def _local_remote(remote: str | None) -> list[Path]:
    """A local remote's path: its upload-pack and receive-pack run in it as the hub."""
    if not remote:
        return []
    scheme = urlparse(remote).scheme
    if scheme == "file":
        path = Path(urlparse(remote).path)
    elif scheme or ":" in remote.split("/")[0]:
        return []  # a URL, or scp-like ssh syntax
    else:
        path = Path(remote)
    return [path, path / ".git"]


def _worktree_environment(worktree: AgentWorktree) -> dict[str, str]:
    return {
        "HOME": "/tmp" if os.geteuid() == 0 else str(git_home()),
        "XDG_CONFIG_HOME": "/tmp/.config" if os.geteuid() == 0 else str(git_home() / ".config"),
        "GIT_DIR": str(worktree.git_dir),
        "GIT_WORK_TREE": str(worktree.work_tree),
        "GIT_INDEX_FILE": str(worktree.index),
        "GIT_OBJECT_DIRECTORY": str(worktree.objects),
        "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(worktree.mirror / "objects"),
        "GIT_CEILING_DIRECTORIES": str(worktree.work_tree.parent),
    }


@functools.cache
def _bwrap() -> str | None:
    return shutil.which("bwrap")


def _jailed(worktree: AgentWorktree, env: dict[str, str], args: Sequence[str]) -> list[str]:
    """bwrap, started by root, binds what git needs at their real paths and drops to the uid."""
    bwrap = _bwrap()
    if not bwrap:
        raise WorkspaceError(
            "bubblewrap is not installed: the hub runs git on agent worktrees inside it "
            "(apt-get install bubblewrap)"
        )
    uid = str(settings.FLOTILLA_SANDBOX_UID)
    argv = [
        *(bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"),
        *("--unshare-cgroup-try", "--die-with-parent", "--new-session"),
        *("--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--ro-bind", "/usr", "/usr"),
        *_system_dirs(),
        *("--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"),
    ]
    binds = [
        ("--ro-bind", worktree.mirror),
        ("--ro-bind", worktree.work_tree),
        ("--bind", worktree.scratch),
    ]
    argv += _parent_dirs([path for _, path in binds])
    for option, path in binds:
        argv += [option, str(path), str(path)]
    argv += ["--remount-ro", "/", "--chdir", str(worktree.work_tree), "--clearenv"]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    setpriv = [f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all"]
    setpriv += ["--bounding-set=-all", "--no-new-privs"]
    return [*argv, "--", "/usr/bin/setpriv", *setpriv, "--", "git", *args]


def _system_dirs() -> list[str]:
    argv: list[str] = []
    for link in SYSTEM_DIRS:
        path = Path(link)
        if path.is_symlink():
            argv += ["--symlink", str(path.readlink()), link]
        elif path.is_dir():
            argv += ["--ro-bind", link, link]
    return argv


def _parent_dirs(paths: list[Path]) -> list[str]:
    """Make the directories above each bind readable: bwrap would create them mode 0700."""
    argv: list[str] = []
    made: set[Path] = set()
    for path in paths:
        for parent in reversed(path.parents):
            if parent in made or parent == Path("/") or parent == Path("/tmp"):
                continue
            if parent == Path("/usr") or Path("/usr") in parent.parents:
                continue
            made.add(parent)
            argv += ["--perms", "0755", "--dir", str(parent)]
    return argv


def _execute(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: Path | None = None,
    stdin: bytes | BinaryIO | None = None,
) -> GitResult:
    timeout = settings.FLOTILLA_GIT_TIMEOUT_S
    process = subprocess.Popen(
        dying_with_parent(argv),
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE if isinstance(stdin, bytes) else (stdin or subprocess.DEVNULL),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(stdin if isinstance(stdin, bytes) else None, timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return GitResult(-signal.SIGKILL, "", f"timed out after {timeout} s")
    stdout = out.decode("utf-8", "replace")
    # As GitPython did: one trailing newline is not part of the answer.
    return GitResult(process.returncode, stdout.removesuffix("\n"), err.decode("utf-8", "replace"))


def git_checked(
    args: Sequence[str],
    *,
    git_dir: Path | None = None,
    worktree: AgentWorktree | None = None,
    remote: str | None = None,
    stdin: bytes | BinaryIO | None = None,
) -> str:
    """``git_run`` that raises ``WorkspaceError`` naming the command when git fails."""
    result = git_run(args, git_dir=git_dir, worktree=worktree, remote=remote, stdin=stdin)
    if result.status != 0:
        command = _command_name(args)
        detail = (result.stderr or result.stdout).strip()
        raise WorkspaceError(f"git {command} failed: {detail}")
    return result.stdout


def _command_name(args: Sequence[str]) -> str:
    """The git command in ``args``, past any ``-c key=value`` options."""
    skip = False
    for arg in args:
        if not skip and not arg.startswith("-"):
            return arg
        skip = arg == "-c"
    return args[0] if args else "git"
