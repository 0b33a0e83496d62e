"""End-to-end fixtures: a real llama.cpp server on a generated model, the facade in front of it, and the
pages a real browser loads from other origins. All session-scoped: each process starts once per run.

    browser page (origin A) ──fetch──▶ facade (python -m capibara_facade) ──▶ llama.cpp (python -m llama_cpp.server)
    openai SDK / LangChain  ─────────▶        [auth, CORS, validation]            five model aliases, one tiny GGUF
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests import support
from tests.e2e.harness import API_KEY, Facade, LlamaServer, Pages, facade_config, llama_server_config
from tests.e2e.tiny_model import write_tiny_model


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def tiny_model(e2e_dir: Path) -> Path:
    return write_tiny_model(e2e_dir / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def llama(e2e_dir: Path, tiny_model: Path) -> Iterator[LlamaServer]:
    port = support.free_port()
    config_path = e2e_dir / "llama-server.json"
    config_path.write_text(json.dumps(llama_server_config(tiny_model, port), indent=2))
    argv = [support.PYTHON, "-m", "llama_cpp.server", "--config_file", str(config_path)]
    server = support.ServerProcess(argv, port, e2e_dir / "llama-server.log", env={"PYTHONUNBUFFERED": "1"})
    with support.running(server, ready_path="/v1/models", timeout=120):
        yield LlamaServer(server)


@pytest.fixture(scope="session")
def pages() -> Iterator[Pages]:
    served = Pages(support.free_port())
    served.thread.start()
    yield served
    served.close()


@pytest.fixture(scope="session")
def foreign_pages() -> Iterator[Pages]:
    """The same page from an origin the facade does not allow."""
    served = Pages(support.free_port())
    served.thread.start()
    yield served
    served.close()


@pytest.fixture(scope="session")
def facade(e2e_dir: Path, llama: LlamaServer, pages: Pages) -> Iterator[Facade]:
    with support.running(support.facade(e2e_dir, facade_config(llama.url, pages.origin)), timeout=60) as server:
        yield Facade(server)


@pytest.fixture
def sdk(facade: Facade) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=facade.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60) as client:
        yield client


@pytest.fixture
def direct(llama: LlamaServer) -> Iterator[httpx.Client]:
    """Raw HTTP straight to llama.cpp, bypassing the facade."""
    with httpx.Client(base_url=llama.url, timeout=60) as client:
        yield client


@pytest.fixture
def via_facade(facade: Facade) -> Iterator[httpx.Client]:
    """Raw HTTP to the facade, with the client key."""
    with httpx.Client(base_url=facade.url, timeout=60, headers={"authorization": f"Bearer {API_KEY}"}) as client:
        yield client
