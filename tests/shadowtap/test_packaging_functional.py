"""Installed the way users install tools: the wheels, the sdist and the image's build steps.

The image's two stages (deploy/image-build.sh, deploy/image-install.sh) run here as deploy/Dockerfile
runs them, in fresh venvs: a platform wheel with the compiled data path is built, installed alone
(core dependencies only) and used: the data path runs compiled, ``shadowtap demo`` passes, the proxy's
start-up line says which data path runs, and a command that needs an extra says which one. The sdist
builds a pure wheel that runs interpreted and says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"

#: The module's first test builds and installs the wheels (mypyc compiles 19 modules: about 90 s on
#: an idle core, more beside the other tests), which the suite's 120 s default does not cover.
pytestmark = pytest.mark.timeout(600)


@dataclass(frozen=True)
class Installed:
    wheel: Path
    prefix: Path
    install_output: str

    def run(self, *args: str, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SHADOWTAP_PURE", "VIRTUAL_ENV")}
        return subprocess.run(
            [str(self.prefix / "bin" / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            env=env,
            check=False,
        )


def _sh(*args: str | Path, cwd: Path, timeout: float = 600, extra_env: dict[str, str] | None = None) -> str:
    # Outside the checkout, so nothing is imported from the working tree by accident.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SHADOWTAP_PURE", "VIRTUAL_ENV")}
    env.update(extra_env or {})
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env, check=False
    )
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    work = tmp_path_factory.mktemp("image")
    # A copy of the committed tree (git archive: no build output, no venv), as a build context is.
    source = work / "src"
    source.mkdir()
    archive = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    files = [name for name in archive.decode().split("\0") if name and (REPO / name).exists()]
    subprocess.run(["tar", "-C", str(REPO), "-cf", str(work / "src.tar"), *files], check=True, timeout=120)
    subprocess.run(["tar", "-C", str(source), "-xf", str(work / "src.tar")], check=True, timeout=120)
    # The checkout's `make native` keeps its build by the tree's digest (scripts/build_native.py): the
    # same tree's wheel takes it from there instead of compiling it a second time in this run; on a
    # tree that differs from the checkout's last build, the image build compiles.
    cache = {"SHADOWTAP_NATIVE_CACHE": str(REPO / ".venv" / "native-cache")}
    _sh(source / "deploy" / "image-build.sh", source, work / "wheels", work / "build-venv", cwd=work, extra_env=cache)
    (wheel,) = (work / "wheels").glob("shadowtap-*.whl")
    output = _sh(source / "deploy" / "image-install.sh", work / "wheels", work / "opt", cwd=work)
    yield Installed(wheel, work / "opt", output)


def test_the_platform_wheel_holds_shadowtap_alone_with_a_build_matching_its_sources(installed: Installed) -> None:
    assert re.fullmatch(r"shadowtap-0\.1\.0-cp3\d+-cp3\d+-linux_\w+\.whl", installed.wheel.name), installed.wheel.name
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = wheel.namelist()
        tops = {name.split("/")[0] for name in names}
        assert tops == {"shadowtap", "shadowtap-0.1.0.dist-info"}
        assert wheel.read("shadowtap-0.1.0.dist-info/top_level.txt").decode().split() == ["shadowtap"]
        manifest = json.loads(wheel.read("shadowtap/wire/_compiled/manifest.json"))
        # Never shipped stale: every compiled module's digest is its source's in this same wheel.
        for module, digest in manifest["modules"].items():
            source = module.replace(".", "/") + ".py"
            assert hashlib.sha256(wheel.read(source)).hexdigest() == digest, module
        compiled = [n for n in names if "/_compiled/" in n and n.endswith(".so")]
        assert len(compiled) == len(manifest["modules"]) + 1  # and the group library
    assert "shadowtap data path: compiled (mypyc " in installed.install_output


def test_the_installed_wheel_runs_the_demo_compiled(installed: Installed, tmp_path: Path) -> None:
    result = installed.run("shadowtap", "demo", "--out", str(tmp_path / "demo"), "--sessions", "10", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "demo").is_dir()
    pip = installed.run("pip", "list", "--format", "json")
    packages = {p["name"].lower() for p in json.loads(pip.stdout)}
    # The core: the sidecar needs neither mitmproxy nor Locust nor DeepDiff.
    assert not packages & {"mitmproxy", "locust", "deepdiff", "gevent"}


def test_the_proxy_start_up_line_says_which_data_path_runs(installed: Installed, tmp_path: Path) -> None:
    proxy = subprocess.Popen(
        [str(installed.prefix / "bin" / "shadowtap"), "proxy", "--listen", "127.0.0.1:0", "--primary",
         "http://127.0.0.1:9", "--admin", "off"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert proxy.stdout is not None
        line = proxy.stdout.readline()
    finally:
        proxy.terminate()
        proxy.communicate(timeout=60)
    assert re.search(r"listening on http://127\.0\.0\.1:\d+ .* data path compiled \(mypyc [\d.]+, \d+ modules\)", line)


def test_a_command_that_needs_a_missing_extra_says_which_in_one_line(installed: Installed, tmp_path: Path) -> None:
    flows = FIXTURES / "mitmproxy" / "httpbin.mitm"
    result = installed.run("shadowtap", "import", "--from", "mitm", str(flows), "--out", str(tmp_path / "t"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "shadowtap import: error: mitmproxy flow files need mitmproxy: pip install 'shadowtap[mitm]'"
    ]
    assert not (tmp_path / "t").exists()


def test_the_sdist_builds_a_pure_wheel_that_runs_interpreted_and_says_so(installed: Installed, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    build_python = installed.wheel.parents[1] / "build-venv" / "bin" / "python"
    source = installed.wheel.parents[1] / "src"
    _sh(build_python, "-m", "build", "--sdist", "--outdir", dist, source, cwd=tmp_path)
    (sdist,) = dist.glob("shadowtap-0.1.0.tar.gz")
    _sh(build_python, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", dist, sdist, cwd=tmp_path)
    (pure,) = dist.glob("shadowtap-0.1.0-py3-none-any.whl")
    with zipfile.ZipFile(pure) as wheel:
        assert not [n for n in wheel.namelist() if "_compiled" in n]
    # Into a venv of its own that borrows the core's dependencies from the installed one.
    venv = tmp_path / "pure"
    _sh(installed.prefix / "bin" / "python", "-m", "venv", venv, cwd=tmp_path)
    _sh(venv / "bin" / "pip", "install", "--quiet", "--no-deps", pure, cwd=tmp_path)
    # After the install: pip would otherwise see the compiled shadowtap there and skip this one.
    site = next((installed.prefix / "lib").glob("python3.*/site-packages"))
    (next((venv / "lib").glob("python3.*/site-packages")) / "core.pth").write_text(f"{site}\n")
    status = _sh(venv / "bin" / "python", "-c", "from shadowtap.wire import native; print(native.STATUS)", cwd=tmp_path)
    assert status.strip() == "interpreted: no compiled build (make native in a checkout; a pure wheel has none)"
