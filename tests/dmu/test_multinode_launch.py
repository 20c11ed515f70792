"""Dry runs of scripts/dmu/dmu_sharegpt4v_8gpu.sh on 2 nodes x 8 GPUs: stand-ins for `python` and
`accelerate` record the launch line each node would run; torchrun's and accelerate's own parsers
(and accelerate's DeepSpeed launch preparation with the shipped config) then say what they would do.
Neither torchrun nor accelerate has a dry run, so this stops where they would start processes."""

import os
import socket
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "dmu", "dmu_sharegpt4v_8gpu.sh")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_line(tmp_path, node_rank, launcher, port=29500):
    """The argv the script execs on node `node_rank` (without the program name)."""
    recorder = tmp_path / "record"
    recorder.write_text(f'#!/usr/bin/env bash\nprintf "%s\\0" "$@" > {tmp_path}/argv\n')
    recorder.chmod(0o755)
    base = tmp_path / "base"
    base.mkdir(exist_ok=True)
    (base / "config.json").write_text("{}")  # the dense base exists: the script goes straight to the launch
    env = dict(os.environ, DATA="data/sharegpt4v/share-captioner.json", BASE=str(base), NNODES="2",
               NODE_RANK=str(node_rank), MASTER_ADDR="node-1", MASTER_PORT=str(port), LAUNCHER=launcher,
               PYTHON=str(recorder), ACCELERATE=str(recorder))
    proc = subprocess.run(["bash", SCRIPT], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return (tmp_path / "argv").read_text().split("\0")[:-1]


@pytest.mark.parametrize("node_rank", [0, 1])
def test_torchrun_line_per_node(tmp_path, node_rank):
    from torch.distributed.run import config_from_args, get_args_parser

    argv = launch_line(tmp_path, node_rank, "torchrun")
    assert argv[:2] == ["-m", "torch.distributed.run"]
    args = get_args_parser().parse_args(argv[2:])
    config, cmd, cmd_args = config_from_args(args)
    assert (config.min_nodes, config.max_nodes, config.nproc_per_node) == (2, 2, 8)
    assert config.rdzv_backend == "static" and config.rdzv_endpoint == "node-1:29500"
    assert config.rdzv_configs["rank"] == node_rank  # the static rendezvous ranks the nodes as given
    i = cmd_args.index("clipmoe_encoder.cli")
    assert cmd_args[i - 1:i + 3] == ["-m", "clipmoe_encoder.cli", "dmu", "run"]
    assert cmd_args[cmd_args.index("--batch-size") + 1] == "800"


@pytest.mark.parametrize("node_rank", [0, 1])
def test_accelerate_line_per_node_uses_torchrun_not_pdsh(tmp_path, node_rank, monkeypatch):
    pytest.importorskip("deepspeed")
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import _filter_args, prepare_deepspeed_cmd_env
    from torch.distributed.run import config_from_args, get_args_parser

    port = _free_port()  # accelerate checks on node 0 that the port is free
    argv = launch_line(tmp_path, node_rank, "accelerate", port)
    assert argv[0] == "launch"
    args, defaults, mp_from_config = _validate_launch_command(launch_command_parser().parse_args(argv[1:]))
    assert args.use_deepspeed and args.zero_stage == 2
    assert (args.num_machines, args.machine_rank, args.num_processes) == (2, node_rank, 16)
    assert args.deepspeed_multinode_launcher == "standard" and args.rdzv_backend == "static"
    for key in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        monkeypatch.delenv(key, raising=False)
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command sets it
    cmd, env = prepare_deepspeed_cmd_env(args)
    assert cmd is None  # no `deepspeed --hostfile ... --launcher pdsh` started from the first node
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2"
    # what accelerate's deepspeed_launcher hands torchrun on this node
    torchrun_args = _filter_args(args, get_args_parser(), ["--training_script", args.training_script,
                                                           "--training_script_args", args.training_script_args])
    config, _, cmd_args = config_from_args(torchrun_args)
    assert (config.min_nodes, config.nproc_per_node, config.rdzv_backend) == (2, 8, "static")
    assert config.rdzv_endpoint == f"node-1:{port}" and config.rdzv_configs["rank"] == node_rank
    assert "clipmoe_encoder.cli" in cmd_args and cmd_args[cmd_args.index("clipmoe_encoder.cli") + 1] == "dmu"


@pytest.mark.parametrize("env, message", [({"NODE_RANK": "2"}, "NODE_RANK=2: expected 0 .. NNODES-1 (1)"),
                                          ({"NNODES": "two"}, "NNODES=two: expected a positive whole number")])
def test_bad_node_settings_are_one_error_line(tmp_path, env, message):
    full = dict(os.environ, DATA="x.json", NNODES="2", NODE_RANK="0", BASE=str(tmp_path), PYTHON="false")
    full.update(env)
    proc = subprocess.run(["bash", SCRIPT], env=full, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and proc.stderr == f"error: {message}\n"
