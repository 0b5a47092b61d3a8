"""The packaged Serve config file and the application builder's arguments (no cluster needed)."""

from __future__ import annotations

import importlib

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from deblurdiff.serving import config_path
from deblurdiff.serving.app import AppArgs, build_app, validate_args
from deblurdiff.serving.limits import Limits
from deblurdiff.serving.model import BatchSettings


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(config_path().read_text())


def test_config_parses_with_serves_own_schema_and_imports(config):
    schema = ServeDeploySchema.model_validate(config)
    (app,) = schema.applications
    assert app.import_path == "deblurdiff.serving.app:build_app"
    module, attr = app.import_path.split(":")
    assert getattr(importlib.import_module(module), attr) is build_app
    assert schema.http_options.host == "127.0.0.1"  # never exposed unless the user edits it
    # The builder accepts the file's args as they are.
    assert validate_args(app.args).model == "/models/deblurdiff"


def test_config_deployments_autoscale_and_carry_valid_user_config(config):
    deployments = {d["name"]: d for d in config["applications"][0]["deployments"]}
    assert set(deployments) == {"DeblurIngress", "DeblurModel"}
    for d in deployments.values():
        scaling = d["autoscaling_config"]
        assert 1 <= scaling["min_replicas"] <= scaling["max_replicas"]
    model = deployments["DeblurModel"]
    settings = BatchSettings(**model["user_config"])
    assert model["max_ongoing_requests"] >= settings.max_batch_size  # batches can fill
    assert model["max_queued_requests"] >= 1
    assert Limits(**deployments["DeblurIngress"]["user_config"]) == Limits()  # the file documents the defaults


def test_builder_names_its_deployments_and_applies_args():
    app = build_app({"model": "/m", "min_replicas": 0, "max_replicas": 3, "max_queued_requests": 5,
                     "max_steps": 10, "device": "cpu"})
    ingress = app._bound_deployment
    model = ingress.init_args[0]._bound_deployment if hasattr(ingress.init_args[0], "_bound_deployment") \
        else ingress.init_args[0]
    assert ingress.name == "DeblurIngress" and model.name == "DeblurModel"
    assert model._deployment_config.autoscaling_config.max_replicas == 3
    assert model._deployment_config.max_queued_requests == 5
    assert ingress._deployment_config.user_config["max_steps"] == 10
    # No default_steps given: requests without steps run the model's validated steps.
    assert ingress._deployment_config.user_config.get("default_steps") is None


@pytest.mark.parametrize("args, needle", [
    ({}, "model"),
    ({"model": "/m", "max_replica": 2}, "max_replica: unknown key"),
    ({"model": "/m", "min_replicas": 3, "max_replicas": 1}, "min_replicas (3) must be <= max_replicas (1)"),
    ({"model": "/m", "device": "tpu"}, "device"),
    ({"model": "/m", "max_steps": 0}, "max_steps"),
])
def test_builder_rejects_bad_args_naming_the_key(args, needle):
    with pytest.raises(ValueError) as info:
        build_app(args)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_app_args_cover_the_agreed_interface():
    # Keys agreed with infra (RayService serveConfigV2 args).
    for key in ("model", "min_replicas", "max_replicas", "target_ongoing_requests", "max_ongoing_requests",
                "max_queued_requests", "request_timeout_s", "max_body_bytes", "max_pixels", "max_steps",
                "default_steps", "device"):
        assert key in AppArgs.model_fields
