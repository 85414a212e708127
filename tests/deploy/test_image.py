"""The image installs through scripts/install.sh, the script CI's test command runs, so it cannot drift from
what CI tests; and the Dockerfile keeps its promises (variants, non-root, volumes, /ready healthcheck)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

from deploy_helpers import REPO

from server.settings import Settings, env_name


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = (REPO / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            out.append((keyword.upper(), " ".join(args.split())))
    return out


def of(keyword: str) -> list[str]:
    return [args for k, args in instructions() if k == keyword]


def calls_install(script: str) -> bool:
    return any(re.match(r"^(exec )?bash scripts/install\.sh\b", line.strip()) for line in script.splitlines())


def test_image_ci_and_serve_install_through_one_script() -> None:
    runs = [r for r in of("RUN") if "install.sh" in r]
    assert all(r.startswith("bash scripts/install.sh ") for r in runs), runs
    # Layers a later change reuses: torch, then the other dependencies, then Swapyard itself; all one variant.
    torch, deps, full = [shlex.split(r.split(" && ")[0]) for r in runs]
    assert torch[-2:] == ["--only", "torch"] and deps[-2:] == ["--only", "deps"] and "--only" not in full
    for argv in (torch, deps, full):
        assert argv[argv.index("--torch") + 1] == "${VARIANT}"
    assert deps[deps.index("--extras") + 1] == full[full.index("--extras") + 1]
    assert any(c.split()[0] == "scripts/install.sh" for c in of("COPY"))
    assert "pip install" not in " ".join(of("RUN")), "the image installs Python packages outside install.sh"

    assert calls_install((REPO / "scripts/test.sh").read_text())
    assert calls_install((REPO / "scripts/serve.sh").read_text())
    ci = [line for line in (REPO / ".ci/run").read_text().splitlines() if line and not line.startswith("#")]
    assert "bash scripts/test.sh" in ci  # CI runs the README's test command, which installs as above


def test_install_script_is_valid_and_refuses_bad_arguments() -> None:
    for script in ("install.sh", "test.sh", "serve.sh"):
        subprocess.run(["bash", "-n", str(REPO / "scripts" / script)], check=True)
    bad = subprocess.run(
        ["bash", str(REPO / "scripts/install.sh"), "--torch", "tpu"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "--torch must be cpu or cuda" in bad.stderr
    bad = subprocess.run(
        ["bash", str(REPO / "scripts/install.sh"), "--only", "all"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "--only must be torch or deps" in bad.stderr


def test_install_only_steps_ask_pip_for_their_layer_alone(tmp_path: Path) -> None:
    """The Dockerfile's layers: --only torch installs nothing past torch; --only deps asks pip for exactly the
    dependencies pyproject.toml lists for the extras (swapyard[...] expanded), never for Swapyard itself."""
    venv, calls = tmp_path / "venv", tmp_path / "pip-calls"
    (venv / "bin").mkdir(parents=True)
    # The real interpreter (torch importable: the torch step is skipped), except that `-m pip` only records
    # its arguments and the requirement files it is given.
    (venv / "bin/python").write_text(
        "#!/usr/bin/env bash\n"
        'if [ "$1 $2" = "-m pip" ]; then\n'
        f'  echo "pip: $*" >> {calls}; prev=""\n'
        f'  for a in "$@"; do [ "$prev" != -r ] || cat "$a" >> {calls}; prev="$a"; done; exit 0\n'
        "fi\n"
        f'exec {sys.executable} "$@"\n'
    )
    (venv / "bin/python").chmod(0o755)

    def install(*args: str) -> list[str]:
        calls.unlink(missing_ok=True)
        subprocess.run(["bash", str(REPO / "scripts/install.sh"), "--venv", str(venv), *args], check=True)
        return calls.read_text().splitlines() if calls.exists() else []

    assert install("--only", "torch") == []
    lines = install("--extras", "test", "--only", "deps")
    assert len([line for line in lines if line.startswith("pip: ")]) == 1 and " -e " not in lines[0], lines
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    own = [r for r in extras["test"] if r.startswith("swapyard[")]
    assert own, "the test extra is expected to pull other extras in (swapyard[...])"
    expected = project["dependencies"] + [r for r in extras["test"] if r not in own]
    for extra in own:  # swapyard[name] expands to that extra's own list
        expected += extras[extra.removeprefix("swapyard[").removesuffix("]")]
    assert sorted(lines[1:]) == sorted(expected)


def test_dockerfile_variants_user_volumes_healthcheck_and_settings() -> None:
    assert "VARIANT=cpu" in of("ARG")
    stages = {args.split(" AS ")[-1]: args.split(" AS ")[0] for args in of("FROM")}
    assert {"base-cpu", "base-cuda"} <= stages.keys() and stages["runtime"] == "base-${VARIANT}"

    (user,) = of("USER")
    assert user not in ("root", "0")
    volumes = " ".join(of("VOLUME"))
    assert "/data/cache" in volumes and "/data/adapters" in volumes
    env = " ".join(of("ENV"))
    assert "HF_HOME=/data/cache/" in env

    (health,) = of("HEALTHCHECK")
    assert "/ready" in health and re.search(r"--start-period=\d+", health)
    (entry,) = of("ENTRYPOINT")
    assert entry == '["swapyard", "serve"]' and not of("CMD")  # settings come only from SWAPYARD_*

    fields = {env_name(f) for f in Settings.model_fields}
    set_here = set(re.findall(r"\b(SWAPYARD_[A-Z_]+)=", env)) - {"SWAPYARD_VENV", "SWAPYARD_TORCH_INDEX_URL"}
    assert set_here <= fields, f"the Dockerfile sets {set_here - fields}, which are not settings"


def test_dockerignore_lets_in_what_the_image_copies() -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "**" in ignore  # allow-list: nothing else (venvs, caches, runs) goes into the build context
    for copy in of("COPY"):
        source = copy.split()[0]
        assert f"!{source}" in ignore or f"!{source}/" in ignore, (
            f"COPY {source} is excluded by .dockerignore"
        )
