"""The container image and compose file, as far as a machine without a Docker engine can prove them.

No engine runs here, so the image is never built. What is proven instead: the Dockerfile installs the runtime
lock with the Makefile's own commands (which CI runs on every change), everything it copies is in the build
context, it runs as an unprivileged user, its CMD and ENV start a facade, and its HEALTHCHECK passes on a
serving facade and fails, saying why, on a dead one. The compose file follows the Compose specification, its
nginx reaches the facade where the facade listens, the facade's limits live in its Redis (whose command
Debian's redis-server accepts) and only nginx's forwarded addresses are believed.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import yaml
from compose_spec import PyCompose

from capibara_facade.config import Config, load_config
from capibara_facade.healthcheck import DEFAULT_TIMEOUT_SECONDS
from tests import support
from tests.deploy.tools import DEPLOY, DOCKERFILE, exec_form, image_env, instructions, redis_started_with

COMPOSE = DEPLOY / "compose.yaml"
RUNTIME_LOCK = "requirements/runtime.lock"


def makefile_install_commands() -> list[str]:
    """The commands `make install` runs to create the virtualenv, install the runtime lock and the project,
    variables expanded."""
    text = (support.ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"(?m)^(\w+)\s*[:?]?=\s*(.*?)\s*$", text))

    def expanded(value: str) -> str:
        while match := re.search(r"\$\((\w+)\)", value):
            value = value.replace(match.group(0), variables[match.group(1)])
        return value

    commands = []
    for target in (r"\$\(PY\)", r"\$\(STAMP\)/runtime"):
        recipe = re.search(rf"(?m)^{target}:.*\n((?:\t.*\n)+)", text)
        assert recipe is not None, f"Makefile has no recipe for {target}"
        commands += [expanded(line.strip()) for line in recipe.group(1).splitlines() if "pip" in line or "venv" in line]
    return commands


def dockerignored(path: str) -> bool:
    """Docker's rule: the last .dockerignore pattern matching the path or one of its parent directories wins."""
    ignored = False
    for line in (support.ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        regex = re.escape(body).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:depth])) for depth in range(1, len(parts) + 1)):
            ignored = not negated
    return ignored


# --- Dockerfile -----------------------------------------------------------------------------------------------


def test_the_image_installs_the_runtime_lock_and_the_project_with_the_makefiles_own_commands() -> None:
    runs = [arguments for keyword, arguments in instructions() if keyword == "RUN"]
    steps = [step.strip() for run in runs for step in run.split("&&")]
    commands = makefile_install_commands()
    assert len(commands) == 4, commands  # venv, pip upgrade, the runtime lock, the project
    venv, upgrade_pip, locked, project = commands
    assert f"--require-hashes -r {RUNTIME_LOCK}" in locked
    # The one difference: the image installs the project as a regular package, not an editable one.
    assert project.endswith(" -e .")
    expected = [venv, upgrade_pip, locked, project.removesuffix(" -e .") + " ."]
    assert expected[0] in steps, f"the Dockerfile does not run {expected[0]!r}"
    position = steps.index(expected[0])
    assert steps[position : position + len(expected)] == expected
    # ...and keeps only that installed copy: the sources it was built from would shadow it under `python -m`.
    assert "rm -rf build capibara_facade capibara_facade.egg-info" in steps[position + len(expected) :]


def test_everything_the_image_copies_is_in_the_build_context() -> None:
    copies = [arguments.split()[:-1] for keyword, arguments in instructions() if keyword == "COPY"]
    sources = [source for group in copies for source in group]
    assert sources
    for source in sources:
        path = support.ROOT / source
        assert path.exists(), f"COPY {source}: no such file in the repository"
        files = [path] if path.is_file() else [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
        for file in files:
            relative = file.relative_to(support.ROOT).as_posix()
            assert not dockerignored(relative), f"COPY {source}: {relative} is excluded by .dockerignore"


def test_secrets_and_the_virtualenv_stay_out_of_the_build_context() -> None:
    for path in (".venv/bin/python", ".git/config", "tests/support.py", ".make/test", "bench/results/x.json"):
        assert dockerignored(path), path


def test_the_image_runs_as_an_unprivileged_user() -> None:
    users = [arguments for keyword, arguments in instructions() if keyword == "USER"]
    assert users, "no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    keywords = [keyword for keyword, _ in instructions()]
    assert keywords.index("USER") < keywords.index("CMD")


def test_the_images_command_serves_and_its_healthcheck_tells_alive_from_dead(tmp_path: Path) -> None:
    (healthcheck,) = [arguments for keyword, arguments in instructions() if keyword == "HEALTHCHECK"]
    check = exec_form(healthcheck[healthcheck.index("CMD") + 3 :])
    (cmd,) = [arguments for keyword, arguments in instructions() if keyword == "CMD"]
    with support.running(support.demo_upstream(tmp_path)) as upstream:
        port = support.free_port()
        config = tmp_path / "capibara-facade.toml"
        config.write_text(f"[server]\nport = {port}\n\n" + support.upstream_config(upstream.url))
        # The image's environment; only the config path and (tests stay on loopback) the address differ.
        env = {**image_env(), "CAPIBARA_CONFIG": str(config), "CAPIBARA_HOST": "127.0.0.1"}
        container = support.ServerProcess(exec_form(cmd), port, tmp_path / "container.log", env)
        check_env = {**os.environ, **env}
        with support.running(container):
            alive = subprocess.run(check, env=check_env, capture_output=True, text=True, timeout=30)
            assert alive.returncode == 0, alive.stderr
        dead = subprocess.run(check, env=check_env, capture_output=True, text=True, timeout=30)
        assert dead.returncode == 1
        assert f"127.0.0.1:{port}/health: connection refused" in dead.stderr


def test_docker_waits_longer_than_the_healthcheck_so_its_reason_reaches_the_health_log() -> None:
    (healthcheck,) = [arguments for keyword, arguments in instructions() if keyword == "HEALTHCHECK"]
    timeout = re.search(r"--timeout=(\d+)s", healthcheck)
    assert timeout is not None, "no --timeout: Docker's default is 30 s"
    assert int(timeout.group(1)) > DEFAULT_TIMEOUT_SECONDS


def test_the_image_stops_on_sigterm_and_documents_a_longer_stop_timeout() -> None:
    (stopsignal,) = [arguments for keyword, arguments in instructions() if keyword == "STOPSIGNAL"]
    assert getattr(signal, stopsignal) == signal.SIGTERM
    grace = load_config(DEPLOY / "capibara-facade.toml", {}).server.shutdown_grace_seconds
    timeout = re.search(r"docker stop -t (\d+)", DOCKERFILE.read_text())
    assert timeout is not None and int(timeout.group(1)) > grace


# --- compose.yaml ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def compose_facade_config(compose: dict[str, Any]) -> Config:
    """The config the facade container runs with: the mounted TOML under the image's and the service's environment."""
    facade = compose["services"]["facade"]
    config_path = image_env()["CAPIBARA_CONFIG"]
    mounted_config = next(v.split(":")[0] for v in facade["volumes"] if v.split(":")[1] == config_path)
    env = {**image_env(), **{k: str(v) for k, v in facade["environment"].items()}}
    env["CAPIBARA_UPSTREAM_URL"] = "http://models-europe:8082"  # compose interpolates it from the host
    return load_config(DEPLOY / mounted_config, env)


def test_the_compose_file_follows_the_compose_specification() -> None:
    parsed = PyCompose.from_yaml(COMPOSE.read_text())
    assert set(parsed.service_names()) == {"facade", "nginx", "redis"}


def test_compose_builds_the_image_from_this_dockerfile_and_mounts_files_that_exist(compose: dict[str, Any]) -> None:
    build = compose["services"]["facade"]["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"compose mounts {source}, which does not exist"
    for env_file in compose["services"]["nginx"]["env_file"]:
        assert (DEPLOY / env_file).is_file()


def test_compose_nginx_renders_the_shipped_site_and_reaches_the_facade_where_it_listens(
    compose: dict[str, Any],
) -> None:
    facade, nginx = compose["services"]["facade"], compose["services"]["nginx"]
    templates = [v for v in nginx["volumes"] if v.split(":")[1].startswith("/etc/nginx/templates/")]
    assert [t.split(":")[0] for t in templates] == ["./nginx/capibara6.conf.template"]
    assert templates[0].split(":")[1].endswith(".template")
    server = compose_facade_config(compose).server
    assert nginx["environment"]["CAPIBARA_FACADE_ADDR"] == f"facade:{server.port}"
    assert str(server.port) in [str(port) for port in facade["expose"]]
    grace = re.fullmatch(r"(\d+)s", facade["stop_grace_period"])
    assert grace is not None and int(grace.group(1)) > server.shutdown_grace_seconds


def test_compose_facade_workers_share_their_limits_in_the_redis_service_started_before_them(
    compose: dict[str, Any],
) -> None:
    facade, redis_service = compose["services"]["facade"], compose["services"]["redis"]
    redis_url = compose_facade_config(compose).limits.redis_url
    assert redis_url is not None
    address = urlsplit(redis_url)
    assert address.hostname == "redis"
    assert str(address.port) in [str(port) for port in redis_service["expose"]]
    assert facade["depends_on"]["redis"]["condition"] == "service_healthy"
    assert redis_service["healthcheck"]["test"][0] == "CMD"
    # Nothing outside the host's compose network reaches the facade or an unauthenticated Redis.
    assert "ports" not in facade and "ports" not in redis_service


def test_compose_facade_believes_forwarded_addresses_only_from_nginx(compose: dict[str, Any]) -> None:
    nginx = compose["services"]["nginx"]
    (network,) = nginx["networks"]
    nginx_address = nginx["networks"][network]["ipv4_address"]
    assert compose_facade_config(compose).server.trusted_proxies == (nginx_address,)
    (subnet,) = compose["networks"][network]["ipam"]["config"]
    assert ipaddress.ip_address(nginx_address) in ipaddress.ip_network(subnet["subnet"])
    assert network in compose["services"]["facade"]["networks"]


def test_compose_redis_command_runs_without_persistence_and_its_healthcheck_passes(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    service = compose["services"]["redis"]
    command = service["command"]
    assert command[0] == "redis-server"
    with redis_started_with(command[1:], tmp_path) as port, redis.Redis(port=port) as client:
        settings = {key: client.config_get(key)[key] for key in ("save", "appendonly", "maxmemory-policy")}
        assert settings == {"save": "", "appendonly": "no", "maxmemory-policy": "volatile-ttl"}
        cli, *command = service["healthcheck"]["test"][1:]
        check = [cli, "-p", str(port), *command]  # the port this test gave it; redis-cli's options come first
        result = subprocess.run(check, capture_output=True, text=True, timeout=10)
        assert result.returncode == 0 and result.stdout.strip() == "PONG", result
