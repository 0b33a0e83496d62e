"""nginx from Debian with the shipped site for www.capibara6.com, in front of the facade and the demo upstream.

The site is deploy/nginx/capibara6.conf.template rendered by deploy/nginx/render.sh, exactly as the operator
does it, with only the values a test must change overridden (loopback listen addresses on free ports, a
self-signed certificate for www.capibara6.com and capibara6.com made here with openssl, temporary paths, the
facade's port). It is included from Debian's own /etc/nginx/nginx.conf, adjusted only to run unprivileged
paths under a temporary prefix. Clients connect to 127.0.0.1 with the production host names (SNI and Host).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from capibara_facade.config import ServerConfig, load_config
from tests import support
from tests.deploy.tools import DEPLOY, FACADE_TOML, Arrivals, read_stream

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
RENDER = DEPLOY / "nginx" / "render.sh"
ENV_FILE = DEPLOY / "nginx" / "capibara6.env"
WWW = "www.capibara6.com"
BARE = "capibara6.com"
CHUNK_DELAY = 0.05  # the demo upstream's pause between streamed events
STREAM_MESSAGE = "uno dos tres cuatro cinco seis siete ocho"


def clean_environment() -> dict[str, str]:
    """This process's environment without CAPIBARA_* variables, which would override the env file's values."""
    return {name: value for name, value in os.environ.items() if not name.startswith("CAPIBARA_")}


def render_site(**overrides: str) -> str:
    env = {**clean_environment(), **overrides}
    result = subprocess.run(["bash", str(RENDER)], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate naming both hosts, as Let's Encrypt's would."""
    cert, key = directory / "fullchain.pem", directory / "privkey.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", f"/CN={WWW}", "-addext", f"subjectAltName=DNS:{WWW},DNS:{BARE}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def main_conf(prefix: Path, site: Path) -> str:
    """Debian's /etc/nginx/nginx.conf, with its pid, logs, temp files and site include moved under `prefix`."""
    text = Path("/etc/nginx/nginx.conf").read_text()
    user = "user root;" if os.geteuid() == 0 else ""
    temp = "".join(f"\n\t{kind}_temp_path {prefix}/temp/{kind};" for kind in ("client_body", "proxy", "fastcgi"))
    temp += "".join(f"\n\t{kind}_temp_path {prefix}/temp/{kind};" for kind in ("uwsgi", "scgi"))
    edits = [
        (r"(?m)^user\s+[^;]+;", user),
        (r"(?m)^pid\s+[^;]+;", f"pid {prefix}/nginx.pid;"),
        (r"/var/log/nginx/", f"{prefix}/logs/"),
        (r"include /etc/nginx/conf\.d/\*\.conf;", ""),
        (r"include /etc/nginx/sites-enabled/\*;", f"include {site};"),
        (r"(?m)^http \{", "http {" + temp),
    ]
    for pattern, replacement in edits:
        text, count = re.subn(pattern, replacement, text)
        assert count, f"Debian's nginx.conf no longer has {pattern!r}: update this test's adjustments"
    return "daemon off;\n" + text


@dataclass
class Site:
    """nginx serving the rendered site on loopback; clients speak to it with the production host names."""

    https_port: int
    http_port: int
    certificate: Path
    prefix: Path
    nginx_t: subprocess.CompletedProcess[str]

    @property
    def origin(self) -> str:
        return f"https://{WWW}:{self.https_port}"

    def client(self, host: str = WWW, address: str = "127.0.0.1") -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.certificate))
        return httpx.Client(
            base_url=f"https://{address}:{self.https_port}", verify=context, headers={"Host": host}, timeout=30
        )

    def request(self, method: str, path: str, host: str = WWW, **kwargs: Any) -> httpx.Response:
        with self.client(host) as client:
            return client.request(method, path, extensions={"sni_hostname": host}, **kwargs)


@contextlib.contextmanager
def serve_site(prefix: Path, facade_addr: str) -> Iterator[Site]:
    """Render the shipped site for this machine, check it with `nginx -t`, run nginx until the block ends."""
    for directory in ("logs", "temp", "www", "acme/.well-known/acme-challenge", "tls"):
        (prefix / directory).mkdir(parents=True, exist_ok=True)
    (prefix / "www" / "index.html").write_text("<!doctype html><title>capibara6</title><h1>capibara6</h1>\n")
    (prefix / "acme/.well-known/acme-challenge/token-123").write_text("token-123.key-authorization\n")
    certificate, key = make_certificate(prefix / "tls")
    https_port, http_port = support.free_port(), support.free_port()
    site = prefix / "capibara6.conf"
    site.write_text(
        render_site(
            CAPIBARA_HTTP_LISTEN=f"127.0.0.1:{http_port}",
            CAPIBARA_HTTP_LISTEN_IPV6=f"[::1]:{http_port}",
            CAPIBARA_HTTPS_LISTEN=f"127.0.0.1:{https_port}",
            CAPIBARA_HTTPS_LISTEN_IPV6=f"[::1]:{https_port}",
            CAPIBARA_PUBLIC_ORIGIN=f"https://{WWW}:{https_port}",
            CAPIBARA_TLS_CERTIFICATE=str(certificate),
            CAPIBARA_TLS_CERTIFICATE_KEY=str(key),
            CAPIBARA_ACME_ROOT=str(prefix / "acme"),
            CAPIBARA_STATIC_ROOT=str(prefix / "www"),
            CAPIBARA_FACADE_ADDR=facade_addr,
            CAPIBARA_ACCESS_LOG=str(prefix / "logs" / "capibara6.access.log"),
        )
    )
    conf = prefix / "nginx.conf"
    conf.write_text(main_conf(prefix, site))
    command = [NGINX, "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "logs" / "error.log")]
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr
    server = support.ServerProcess(command, http_port, prefix / "nginx.out")
    with support.running(server, ready_path="/", timeout=20):
        yield Site(https_port, http_port, certificate, prefix, checked)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[support.ServerProcess]:
    directory = tmp_path_factory.mktemp("upstream")
    with support.running(support.demo_upstream(directory, "--chunk-delay", str(CHUNK_DELAY))) as server:
        yield server


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, upstream: support.ServerProcess) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("facade")
    with (
        support.running(support.facade(directory, support.upstream_config(upstream.url))) as facade,
        serve_site(tmp_path_factory.mktemp("nginx"), f"127.0.0.1:{facade.port}") as served,
    ):
        yield served


class Recorder(http.server.BaseHTTPRequestHandler):
    """Stands where the facade would and answers with the headers and connection each request arrived with."""

    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        record = {"headers": {k.lower(): v for k, v in self.headers.items()}, "peer": self.client_address[1]}
        body = json.dumps(record).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def recorded_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    recorder = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=recorder.serve_forever, daemon=True)
    thread.start()
    try:
        with serve_site(tmp_path_factory.mktemp("nginx-recorded"), f"127.0.0.1:{recorder.server_port}") as served:
            yield served
    finally:
        recorder.shutdown()
        recorder.server_close()


def chat(stream: bool, message: str = STREAM_MESSAGE) -> dict[str, Any]:
    return {"model": "capibara6", "messages": [{"role": "user", "content": message}], "stream": stream}


# --- the site file itself --------------------------------------------------------------------------------------


def test_the_rendered_site_passes_nginx_t_inside_debians_nginx_conf(site: Site) -> None:
    assert "test is successful" in site.nginx_t.stderr


def test_rendering_fills_every_placeholder_from_the_env_file_and_keeps_nginx_variables() -> None:
    rendered = render_site()
    assert not re.findall(r"\$\{CAPIBARA_\w+\}", rendered)
    assert f"server_name {WWW} {BARE};" in rendered
    assert "ssl_certificate /etc/letsencrypt/live/www.capibara6.com/fullchain.pem;" in rendered
    for variable in ("$host", "$request_uri", "$proxy_add_x_forwarded_for", "$scheme", "$request_id"):
        assert variable in rendered, f"render.sh blanked nginx's own {variable}"


def test_rendering_refuses_an_env_file_that_leaves_a_placeholder_unfilled(tmp_path: Path) -> None:
    partial = tmp_path / "partial.env"
    partial.write_text("".join(line + "\n" for line in ENV_FILE.read_text().splitlines() if "STATIC_ROOT" not in line))
    result = subprocess.run(
        ["bash", str(RENDER), str(partial)], env=clean_environment(), capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "CAPIBARA_STATIC_ROOT" in result.stderr


def test_nginx_agrees_with_the_facades_shipped_config_on_limits_and_timeouts() -> None:
    """Body size equal to the facade's; silences longer than the facade's; idle connections closed by nginx
    first (else nginx may reuse a keep-alive connection the facade is closing, and a request gets a 502)."""
    config = load_config(FACADE_TOML, {})
    rendered = render_site()
    body = re.search(r"client_max_body_size (\d+)([kmg]?);", rendered)
    assert body is not None
    assert int(body.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[body.group(2)] == (
        config.server.max_body_bytes
    )
    read_timeout = re.search(r"proxy_read_timeout (\d+)s;", rendered)
    assert read_timeout is not None
    assert int(read_timeout.group(1)) > max(up.stream_read_timeout_seconds for up in config.upstreams.values())
    idle = re.search(r"upstream capibara_facade \{[^}]*keepalive_timeout (\d+)s;", rendered)
    assert idle is not None
    assert int(idle.group(1)) < config.server.keepalive_timeout_seconds


# --- what a browser on www.capibara6.com gets --------------------------------------------------------------------


def test_the_frontends_static_files_are_served_over_https(site: Site) -> None:
    response = site.request("GET", "/")
    assert response.status_code == 200
    assert "<title>capibara6</title>" in response.text
    assert response.headers["strict-transport-security"].startswith("max-age=")


def test_ipv6_clients_reach_the_api_too(site: Site) -> None:
    with site.client(address="[::1]") as client:
        response = client.post("/api/chat", json={"message": "por ipv6"}, extensions={"sni_hostname": WWW})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"].endswith("por ipv6")


def test_plain_http_redirects_to_https_except_lets_encrypt_challenges(site: Site) -> None:
    base = f"http://127.0.0.1:{site.http_port}"
    redirect = httpx.get(f"{base}/chat.html?lang=es", headers={"Host": WWW})
    assert redirect.status_code == 301
    assert redirect.headers["location"] == f"{site.origin}/chat.html?lang=es"
    challenge = httpx.get(f"{base}/.well-known/acme-challenge/token-123", headers={"Host": BARE})
    assert challenge.status_code == 200
    assert challenge.text == "token-123.key-authorization\n"


def test_the_bare_domain_redirects_to_www_over_https(site: Site) -> None:
    response = site.request("GET", "/api/chat", host=BARE)
    assert response.status_code == 301
    assert response.headers["location"] == f"{site.origin}/api/chat"


def test_api_chat_answers_through_nginx(site: Site) -> None:
    response = site.request("POST", "/api/chat", json={"message": "hola capibara"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "chat.completion"
    assert "hola capibara" in answer["choices"][0]["message"]["content"]


def test_chat_completions_and_models_answer_through_nginx(site: Site) -> None:
    response = site.request("POST", "/v1/chat/completions", json=chat(stream=False, message="hola"))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"].endswith("hola")
    models = site.request("GET", "/v1/models")
    assert models.status_code == 200
    assert "capibara6" in {model["id"] for model in models.json()["data"]}


@pytest.mark.parametrize(
    ("path", "body"),
    [("/api/chat", {"message": STREAM_MESSAGE, "stream": True}), ("/v1/chat/completions", chat(stream=True))],
)
def test_a_stream_through_nginx_arrives_event_by_event(site: Site, path: str, body: dict[str, Any]) -> None:
    with (
        site.client() as client,
        client.stream("POST", path, json=body, extensions={"sni_hostname": WWW}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        arrivals = read_stream(response)
    arrivals.assert_incremental(CHUNK_DELAY)


def test_the_operators_curl_streams_over_http2(site: Site) -> None:
    """deploy/README.md's last step, `curl -N https://www.capibara6.com/api/chat ...`, pointed at this nginx."""
    command = [
        "curl", "-sS", "-N", "--http2", "--cacert", str(site.certificate),
        "--resolve", f"{WWW}:{site.https_port}:127.0.0.1",
        "-H", "Content-Type: application/json",
        "-d", json.dumps({"message": STREAM_MESSAGE, "stream": True}),
        "--write-out", "http_version=%{http_version}\n",
        f"{site.origin}/api/chat",
    ]  # fmt: skip
    arrivals = Arrivals()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as curl:
        assert curl.stdout is not None
        trailer = b""
        for line in iter(curl.stdout.readline, b""):
            if line.startswith(b"http_version="):
                trailer = line
            else:
                arrivals.feed(line, time.monotonic())
        assert curl.wait(30) == 0, curl.stderr.read() if curl.stderr else ""
    assert trailer.strip() == b"http_version=2"
    arrivals.assert_incremental(CHUNK_DELAY)


def test_a_request_id_from_the_browser_reaches_the_model_server_and_comes_back(
    site: Site, upstream: support.ServerProcess
) -> None:
    # A UUID-form id (like nginx's own $request_id) reaches the model server as it is; other ids are mapped to
    # a stable UUID on the way (tests/integration/test_http.py), since llama.cpp refuses anything else.
    request_id = "7d4c3e1f0a9b4c2d8e6f5a4b3c2d1e0f"
    response = site.request("POST", "/api/chat", json={"message": "trace me"}, headers={"X-Request-ID": request_id})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id
    seen = httpx.get(upstream.url + "/_demo/requests").json()
    assert request_id in {record["request_id"] for record in seen}


def test_bodies_up_to_the_facades_limit_pass_and_larger_ones_are_refused_by_nginx(site: Site) -> None:
    limit = ServerConfig().max_body_bytes
    headers = {"Content-Type": "application/json"}
    at_limit = site.request("POST", "/api/chat", content=b"{" + b" " * (limit - 1), headers=headers)
    assert at_limit.headers.get("content-type", "").startswith("application/json"), "nginx did not pass it on"
    assert at_limit.json()["error"]["type"] == "invalid_request_error"  # the facade's answer to broken JSON
    over = site.request("POST", "/api/chat", content=b"{" + b" " * limit, headers=headers)
    assert over.status_code == 413
    assert "nginx" in over.text


# --- what the facade receives from nginx ---------------------------------------------------------------------


def test_nginx_tells_the_facade_who_asked_and_gives_every_request_an_id(recorded_site: Site) -> None:
    with recorded_site.client() as client:
        first, second = (
            client.post("/api/chat", json={"message": "hola"}, extensions={"sni_hostname": WWW}).json()
            for _ in range(2)
        )
    headers = first["headers"]
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-real-ip"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-forwarded-host"] == WWW
    assert headers["host"] == WWW
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"]), headers
    assert second["headers"]["x-request-id"] != headers["x-request-id"]
    # Keep-alive to the facade: both requests came over one connection, not a new one each time.
    assert "close" not in headers.get("connection", "")
    assert second["peer"] == first["peer"]


def test_nginx_passes_the_browsers_request_id_unchanged(recorded_site: Site) -> None:
    response = recorded_site.request(
        "POST", "/v1/chat/completions", json=chat(stream=False), headers={"X-Request-ID": "rid-from-browser"}
    )
    assert response.json()["headers"]["x-request-id"] == "rid-from-browser"


# --- per-address limits behind nginx -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited_site(tmp_path_factory: pytest.TempPathFactory, upstream: support.ServerProcess) -> Iterator[Site]:
    """The facade with the public tier limited to 2 requests a minute per client address, trusting nginx (on
    127.0.0.1) to say which address that is."""
    config = support.upstream_config(upstream.url)
    config += '[server]\ntrusted_proxies = ["127.0.0.1"]\n[public]\nrequests_per_minute = 2\n'
    with (
        support.running(support.facade(tmp_path_factory.mktemp("limited-facade"), config)) as facade,
        serve_site(tmp_path_factory.mktemp("nginx-limited"), f"127.0.0.1:{facade.port}") as served,
    ):
        yield served


def client_at(site: Site, address: str) -> httpx.Client:
    """A client whose connections to nginx come from `address` (all of 127.0.0.0/8 is this machine), so nginx
    sees a different visitor for each."""
    transport = httpx.HTTPTransport(
        verify=ssl.create_default_context(cafile=str(site.certificate)), local_address=address
    )
    return httpx.Client(
        base_url=f"https://127.0.0.1:{site.https_port}", transport=transport, headers={"Host": WWW}, timeout=30
    )


def ask(client: httpx.Client, **headers: str) -> httpx.Response:
    return client.post("/api/chat", json={"message": "hola"}, headers=headers, extensions={"sni_hostname": WWW})


def test_nginx_appends_the_address_it_saw_to_a_forwarded_for_the_client_sent(recorded_site: Site) -> None:
    with client_at(recorded_site, "127.0.0.2") as client:
        seen = ask(client, **{"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9"}).json()["headers"]
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.2"  # the facade believes only the rightmost
    assert seen["x-real-ip"] == "127.0.0.2"


def test_per_address_limits_apply_to_the_address_nginx_saw(limited_site: Site) -> None:
    with client_at(limited_site, "127.0.0.2") as one, client_at(limited_site, "127.0.0.3") as other:
        answers = [ask(one) for _ in range(3)]
        assert [answer.status_code for answer in answers] == [200, 200, 429]
        refused = answers[-1]
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert ask(other).status_code == 200  # another visitor: a count of its own


def test_a_forwarded_for_sent_through_nginx_cannot_choose_the_address_that_is_limited(limited_site: Site) -> None:
    with client_at(limited_site, "127.0.0.4") as client:
        claims = [{"X-Forwarded-For": f"203.0.113.{n}", "X-Real-IP": f"203.0.113.{n}"} for n in range(1, 4)]
        assert [ask(client, **claim).status_code for claim in claims] == [200, 200, 429]
