"""What the end-to-end fixtures start and the tests share: the servers' handles, the configs, the constants."""

from __future__ import annotations

import functools
import re
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests import support

MODELS_EUROPE = ("aya_expanse_multilingual", "phi4_fast", "mistral_balanced", "qwen_coder", "gemma3_multimodal")
API_KEY = "e2e-key"
HERE = Path(__file__).resolve().parent
ARTIFACTS = support.ROOT / "tests" / "artifacts"

# A tool whose arguments are bounded by the schema (an enum, an integer, a boolean), so that the grammar
# llama.cpp derives from it always closes the JSON object within a few dozen tokens, even for a random model.
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather forecast for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["paris", "madrid", "lisbon"]},
                "days": {"type": "integer"},
                "metric": {"type": "boolean"},
            },
            "required": ["city", "days", "metric"],
            "additionalProperties": False,
        },
    },
}

# A tool loop's second request: the assistant's tool call sent back beside its result.
TOOL_TURN: list[dict[str, Any]] = [
    {"role": "user", "content": "weather in paris?"},
    {
        "role": "assistant",
        "content": None,  # what the openai SDK's users and LangChain send beside tool_calls
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "paris"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
]


class LlamaServer:
    """llama.cpp's OpenAI-compatible server (llama-cpp-python) and its log, for evidence of what it did."""

    def __init__(self, server: support.ServerProcess) -> None:
        self.server = server
        self.url = server.url

    def log_size(self) -> int:
        return self.server.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        with self.server.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", "replace")

    def completed_generation_lengths(self, log_text: str) -> list[int]:
        """Token counts of the generations that ran to their end (llama.cpp prints timings only then)."""
        return [int(runs) for runs in re.findall(r"\beval time = .*? / +(\d+) runs", log_text)]


class Facade:
    def __init__(self, server: support.ServerProcess) -> None:
        self.server = server
        self.url = server.url

    def log_since(self, offset: int) -> str:
        with self.server.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", "replace")

    def log_size(self) -> int:
        return self.server.log_path.stat().st_size


class Pages:
    """The browser test page, served by a plain http.server from an origin of its own."""

    def __init__(self, port: int) -> None:
        handler = functools.partial(_QuietHandler, directory=str(HERE / "pages"))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.origin = f"http://127.0.0.1:{port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name=f"pages-{port}", daemon=True)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def llama_server_config(model_path: Path, port: int) -> dict[str, Any]:
    """llama-cpp-python's --config_file: the one tiny model under the five models-europe names."""
    model = {
        "model": str(model_path),
        "n_ctx": 4096,
        "n_threads": 1,
        "n_threads_batch": 1,
        "verbose": True,  # prints "eval time = ... / N runs" for every generation that runs to its end
    }
    return {
        "host": "127.0.0.1",
        "port": port,
        # By default a new request interrupts a running stream: off, so that only the facade's own
        # cancellation can free the server when a client leaves.
        "interrupt_requests": False,
        "models": [{**model, "model_alias": name} for name in MODELS_EUROPE],
    }


def facade_config(upstream_url: str, page_origin: str) -> str:
    # No [[models]]: the built-in catalog (the five models-europe ids and the `capibara6` alias) is used.
    return (
        support.upstream_config(upstream_url, probe_path="/v1/models")
        + f"""
# llama.cpp's Python server ignores max_completion_tokens and answers 500 to an assistant tool-call turn
# with content null: the facade's compatibility fixes for exactly that (see capibara_facade/config.py).
[upstreams.default.compat]
max_tokens_from_max_completion_tokens = true
empty_content_for_tool_calls = true

[server]
access_log = true
log_level = "info"

[cors]
allow_origins = ["{page_origin}"]

[auth]
api_keys = ["{API_KEY}"]
"""
    )
