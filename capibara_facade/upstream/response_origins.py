"""Which upstream created which response, so that a Responses API request that continues one
(`previous_response_id`) goes back to it: vLLM keeps responses in memory, each replica its own.

In-process and bounded: the newest `capacity` ids are kept, the oldest forgotten first. Each worker keeps its
own, so with several workers (or facade replicas) a continuation that arrives at another worker than its
response is routed as any request (the response's upstream then answers it, or says it does not know it).
"""

from __future__ import annotations

import collections

__all__ = ["ResponseOrigins"]


class ResponseOrigins:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity  # a reload may change it; applied at the next remembered response
        self._upstreams: collections.OrderedDict[str, str] = collections.OrderedDict()

    def remember(self, response_id: str, upstream: str) -> None:
        self._upstreams[response_id] = upstream
        self._upstreams.move_to_end(response_id)
        while len(self._upstreams) > self.capacity:
            self._upstreams.popitem(last=False)

    def upstream_of(self, response_id: str) -> str | None:
        return self._upstreams.get(response_id)
