"""The upstream side: the transport, upstreams and their breakers, picking a target, forwarding, relaying streams."""
