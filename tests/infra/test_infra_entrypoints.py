"""Every command the infra files run is a real `deblurdiff` command line, with real config files.

Entrypoints are parsed with the CLI's own parser (unknown subcommands and flags fail exactly as they
would in the pod), config files are resolved against the repository root (the image's /app, every
pod's workingDir) and validated with the training config schema, overrides included.
"""

from __future__ import annotations

import re

import pytest

from _infra import README, REPO_ROOT, all_groups, container, ray_manifests, split_command

JOBS = {doc["metadata"]["name"]: doc for _, doc in ray_manifests("RayJob")}
OBJECT_STORE = re.compile(r"^(s3|gs|abfss?)://[a-z0-9][a-z0-9.-]+/")


def parse(argv: list[str]):
    """Parse like `deblurdiff` does; a usage error becomes a test failure with argparse's message.

    Flags must be spelt out: argparse would accept `--crops` for `--crops-per-image`, and a later
    flag sharing that prefix would silently change what a manifest means.
    """
    import argparse

    from deblurdiff.cli import build_parser

    assert argv[0] == "deblurdiff", f"entrypoint must run the deblurdiff command: {argv}"
    parser = build_parser()
    try:
        args = parser.parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"`{' '.join(argv)}` is not a valid deblurdiff command line (exit {exc.code})")
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    known = subparsers.choices[args.command]._option_string_actions
    flags = [word.split("=", 1)[0] for word in argv[2:] if word.startswith("--")]
    abbreviated = [flag for flag in flags if flag not in known]
    assert not abbreviated, f"abbreviated or unknown flags {abbreviated} in `{' '.join(argv)}`"
    return args


def test_jobs_and_their_commands():
    assert {name: parse(split_command(doc["spec"]["entrypoint"])).command for name, doc in JOBS.items()} == \
        {"deblurdiff-synth": "synth", "deblurdiff-train": "train", "deblurdiff-restore": "deblur"}


def test_parse_rejects_a_bad_flag():
    with pytest.raises(pytest.fail.Exception):
        parse(["deblurdiff", "synth", "--input", "a", "--output", "b", "--crop-size", "3"])
    with pytest.raises(AssertionError, match="abbreviated"):
        parse(["deblurdiff", "synth", "--input", "a", "--output", "b", "--crops", "3"])


def test_synth_job_reads_and_writes_object_storage_on_cpu_nodes():
    doc = JOBS["deblurdiff-synth"]
    args = parse(split_command(doc["spec"]["entrypoint"]))
    assert all(OBJECT_STORE.match(p) for p in args.input), args.input
    assert OBJECT_STORE.match(args.output), args.output
    assert args.resume, "a RayJob retry must keep the complete shards (without --resume it refuses the output)"
    groups = all_groups(doc)
    assert set(groups) == {"head", "cpu-data"}
    assert all("nvidia.com/gpu" not in container(g)["resources"]["limits"] for g in groups.values())


def test_restore_job_reads_and_writes_object_storage_with_a_model_on_the_pvc():
    doc = JOBS["deblurdiff-restore"]
    args = parse(split_command(doc["spec"]["entrypoint"]))
    assert all(OBJECT_STORE.match(p) for p in args.inputs), args.inputs
    assert OBJECT_STORE.match(args.output), args.output
    assert not args.overwrite, "a RayJob retry must skip the images already restored"
    groups = all_groups(doc)
    assert set(groups) == {"head", "gpu"}
    for name, group in groups.items():  # the model directory: on the shared PVC, mounted on every pod
        shared = [m["mountPath"] for m in container(group)["volumeMounts"] if m["name"] == "shared"]
        assert shared and args.model.startswith(shared[0] + "/"), f"{name}: --model not on the PVC"


def _train_config(doc):
    from deblurdiff.config import load_config
    from deblurdiff.training.config import TrainConfig, check_config

    argv = split_command(doc["spec"]["entrypoint"])
    args = parse(argv)
    config_path = REPO_ROOT / args.config  # the image's /app is the repository root
    assert config_path.is_file(), f"{args.config}: no such file in the repository"
    overrides = list(getattr(args, "set", None) or getattr(args, "overrides", None) or [])
    if args.workers is not None:
        overrides.append(f"scaling.workers={args.workers}")
    return args, check_config(load_config(config_path, TrainConfig, overrides))


def test_train_job_config_overrides_and_sizes():
    doc = JOBS["deblurdiff-train"]
    args, cfg = _train_config(doc)
    assert args.config == "configs/sd21.yaml"
    assert cfg.model.preset == "sd21"
    assert cfg.failure.max_failures >= 1, "FailureConfig must retry worker-group failures"
    assert OBJECT_STORE.match(str(cfg.data.shards)), "train on the synth job's output"
    # Ray Train's storage path must be the shared PVC on every pod of the run (head + GPU workers).
    for name, group in all_groups(doc).items():
        shared = [m["mountPath"] for m in container(group)["volumeMounts"] if m["name"] == "shared"]
        assert shared and cfg.run.output_dir.startswith(shared[0] + "/"), f"{name}: run.output_dir not on the PVC"
    # The frozen SD 2.1 weights: a directory every GPU pod sees (a hub id would need network on every pod).
    assert cfg.model.base_model and cfg.model.base_model.startswith(shared[0] + "/"), cfg.model.base_model
    # One Ray Train worker per GPU of the group as launched.
    gpu = all_groups(doc)["gpu"]
    gpus = gpu["replicas"] * int(container(gpu)["resources"]["limits"]["nvidia.com/gpu"])
    assert cfg.scaling.workers == gpus
    assert cfg.train.batch_size == 64 and cfg.train.lr == pytest.approx(1e-4)


def test_service_reads_the_model_the_train_job_exports():
    args, cfg = _train_config(JOBS["deblurdiff-train"])
    ((_, service),) = ray_manifests("RayService")
    (mount,) = [m for m in container(all_groups(service)["gpu-serve"])["volumeMounts"] if m["name"] == "model"]
    shared = next(m for m in container(all_groups(JOBS["deblurdiff-train"])["gpu"])["volumeMounts"]
                  if m["name"] == "shared")["mountPath"]
    # train exports to run.output_dir/model; the service mounts that folder of the same claim.
    assert f"{shared}/{mount['subPath']}" == f"{cfg.run.output_dir}/model"


def readme_commands() -> list[list[str]]:
    """Every `deblurdiff ...` command in the code blocks of infra/README.md (also after `--`)."""
    text = README.read_text()
    commands = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if " -- deblurdiff " in line:
                line = line.split(" -- ", 1)[1]
            if line.startswith("deblurdiff "):
                commands.append(split_command(line))
    return commands


def test_readme_commands_are_real():
    commands = readme_commands()
    assert {parse(argv).command for argv in commands} >= {"synth", "train", "serve"}
    for argv in commands:
        args = parse(argv)
        if getattr(args, "config", None):
            assert (REPO_ROOT / args.config).is_file(), args.config
