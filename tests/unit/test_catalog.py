"""Model aliasing: public names resolve to their targets, each an upstream and the model id it knows there."""

from __future__ import annotations

import pytest

from capibara_facade.catalog import Catalog
from capibara_facade.config import Config, LegacyChatConfig, ModelConfig, TargetConfig, UpstreamConfig
from capibara_facade.errors import ModelNotFound


def test_a_model_served_under_its_own_name_needs_no_rewrite() -> None:
    (route,) = Catalog(Config()).resolve("phi4_fast").routes
    assert (route.upstream, route.upstream_model, route.rewrites_request) == ("default", "phi4_fast", False)


def test_the_friendly_alias_resolves_to_aya() -> None:
    (route,) = Catalog(Config()).resolve("capibara6").routes
    assert (route.upstream_model, route.rewrites_request, route.rename_response) == (
        "aya_expanse_multilingual", True, False
    )  # fmt: skip


def test_an_unknown_model_is_model_not_found_listing_every_name() -> None:
    with pytest.raises(ModelNotFound) as caught:
        Catalog(Config()).resolve("gpt-17")
    assert caught.value.status == 404 and caught.value.code == "model_not_found"
    assert "'gpt-17'" in caught.value.message and "capibara6" in caught.value.message


def test_unknown_names_pass_through_unchanged_when_configured() -> None:
    config = Config(
        upstreams={"default": UpstreamConfig(), "lab": UpstreamConfig(url="http://127.0.0.1:9")},
        passthrough_unknown_models_to="lab",
    )
    (route,) = Catalog(config).resolve("some-new-model").routes
    assert (route.upstream, route.upstream_model, route.rewrites_request) == ("lab", "some-new-model", False)


def test_response_renaming_applies_only_to_real_aliases() -> None:
    config = Config(models=(ModelConfig(name="same", response_model="alias"),
                            ModelConfig(name="nick", upstream_model="same", response_model="alias")))  # fmt: skip
    catalog = Catalog(config)
    assert catalog.resolve("same").routes[0].rename_response is False
    assert catalog.resolve("nick").routes[0].rename_response is True


def test_a_model_with_several_targets_has_a_route_and_a_weight_for_each() -> None:
    config = Config(
        upstreams={"a": UpstreamConfig(), "b": UpstreamConfig(url="http://127.0.0.1:9")},
        models=(
            ModelConfig(
                name="m",
                upstream_model="shared-id",
                targets=(TargetConfig(upstream="a", weight=3), TargetConfig(upstream="b", upstream_model="b-id")),
                fallbacks=("n",),
            ),
            ModelConfig(name="n", upstream="b"),
        ),
        legacy_chat=LegacyChatConfig(model="m"),
    )
    model = Catalog(config).resolve("m")
    assert [(route.upstream, route.upstream_model) for route in model.routes] == [("a", "shared-id"), ("b", "b-id")]
    assert model.weights == (3, 1) and model.fallbacks == ("n",)
