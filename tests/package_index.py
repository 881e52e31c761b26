"""A Python package index on 127.0.0.2 that stands in for PyPI, with wheels built here.

It serves PEP 503 "simple" pages (``/simple/`` and ``/simple/<name>/``)
and the wheel files they link to (``/files/<wheel>``), and counts every
download, so a test can tell whether a setup fetched a package again. The
wheels are real: pure-Python modules zipped with their METADATA, WHEEL and
RECORD, which pip installs as it would one from PyPI. No internet is used.

As tests/egress_servers.py explains, a host service a sandbox may reach
listens on 127.0.0.2 and is allowlisted as ``host:port``.
"""

import base64
import collections
import hashlib
import html
import re
import shutil
import tempfile
import threading
import zipfile
from pathlib import Path

from tests.egress_servers import HostService


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_build(directory: Path, name: str, version: str, modules: dict[str, str]) -> Path:
    """A pure-Python wheel of ``name`` holding ``modules`` (path → source); its path."""
    dist = re.sub(r"[-_.]+", "_", name)
    info = f"{dist}-{version}.dist-info"
    files = {
        **modules,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: flotilla-tests\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        ),
    }
    record = []
    for path, text in files.items():
        digest = hashlib.sha256(text.encode()).digest()
        encoded = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        record.append(f"{path},sha256={encoded},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    wheel = directory / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


class PackageIndex(HostService):
    """A simple index of the wheels ``add`` built."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="flotilla-index-"))
        self.packages: dict[str, list[Path]] = collections.defaultdict(list)
        self.downloads: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        super().__init__()
        self.url = f"http://{self.address}/simple/"

    def add(self, name: str, version: str, modules: dict[str, str] | None = None) -> Path:
        """Build and publish ``name`` ``version``; by default one module saying its version."""
        module = re.sub(r"[-.]+", "_", name).lower()
        sources = modules or {f"{module}.py": f'VERSION = "{version}"\n'}
        wheel = wheel_build(self.directory, name, version, sources)
        with self.lock:
            self.packages[normalise(name)].append(wheel)
        return wheel

    def downloaded(self, name: str) -> int:
        """How many times a wheel of ``name`` was fetched."""
        prefix = re.sub(r"[-_.]+", "_", name).lower() + "-"
        with self.lock:
            return sum(n for wheel, n in self.downloads.items() if wheel.lower().startswith(prefix))

    def pip_install(self, target: str = ".deps", requirements: str = "requirements.txt") -> str:
        """The setup command that installs ``requirements`` from this index into ``target``."""
        return (
            "python -m pip install --no-cache-dir --disable-pip-version-check --no-input "
            f"--index-url {self.url} --trusted-host 127.0.0.2 --target {target} -r {requirements}"
        )

    def answer(self, path: str) -> tuple[int, bytes, str]:
        parts = [part for part in path.split("?")[0].split("/") if part]
        with self.lock:
            if parts == ["simple"]:
                links = "".join(f'<a href="/simple/{n}/">{n}</a>\n' for n in self.packages)
                return 200, f"<html><body>\n{links}</body></html>".encode(), "text/html"
            if len(parts) == 2 and parts[0] == "simple" and normalise(parts[1]) in self.packages:
                links = "".join(
                    f'<a href="/files/{html.escape(wheel.name)}#sha256='
                    f'{hashlib.sha256(wheel.read_bytes()).hexdigest()}">{wheel.name}</a>\n'
                    for wheel in self.packages[normalise(parts[1])]
                )
                return 200, f"<html><body>\n{links}</body></html>".encode(), "text/html"
            if len(parts) == 2 and parts[0] == "files" and (self.directory / parts[1]).is_file():
                self.downloads[parts[1]] += 1
                return 200, (self.directory / parts[1]).read_bytes(), "application/octet-stream"
        return 404, b"not found", "text/plain"

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        shutil.rmtree(self.directory, ignore_errors=True)
