"""Multi-node dry run of the LLaVA scripts through DeepSpeed's own launcher (deepspeed.launcher.runner)
with the shipped hostfile (2 nodes x 8 GPUs). Stand-ins for `ssh` (DeepSpeed's reachability check and
master address) and `pdsh` (which would start the ranks on every node) record what would run: the
batch split the scripts computed and the environment the second node's ranks receive."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.legacy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOSTFILE = os.path.join(REPO, "scripts", "llava", "hostfile.example")


def _stand_in(folder, name, body):
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write("#!/usr/bin/env bash\n" + body + "\n")
    os.chmod(path, 0o755)


@pytest.fixture
def cluster(tmp_path):
    """A PATH with stand-in ssh and pdsh; pdsh writes its arguments, NUL-separated, to pdsh.args."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "tmp").mkdir()
    _stand_in(bin_dir, "ssh", 'echo 10.0.0.1')  # `ssh node-1 hostname -I` gives the master address
    _stand_in(bin_dir, "pdsh", f'printf "%s\\0" "$@" > {tmp_path}/pdsh.args')
    return tmp_path


def dry_run(world, cluster, script, **env):
    full = dict(os.environ, PYTHONPATH=REPO, PYTHON=sys.executable, DS_ACCELERATOR="cpu",
                PATH=str(cluster / "bin") + os.pathsep + os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
                HOSTFILE=HOSTFILE, MODEL=world.llm, DATA_PATH=world.finetune_json, IMAGE_FOLDER=world.images,
                CLIPMOE_VISION_TOWER=world.tower, PRETRAIN_DIR="none", HOME=str(cluster), TMPDIR=str(cluster / "tmp"),
                OUTPUT_DIR=str(cluster / "checkpoints" / "llava-multinode"), **env)
    full.pop("DS_ENV_FILE", None)
    proc = subprocess.run(["bash", os.path.join(REPO, "scripts", "llava", script)], env=full, cwd=cluster,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    with open(cluster / "pdsh.args") as f:
        args = f.read().split("\0")[:-1]
    return args, proc.stderr


def flag(args, name):
    return args[args.index(name) + 1]


@pytest.mark.parametrize("script, per_device", [("pretrain.sh", "16"), ("finetune.sh", "8")])
def test_two_nodes_split_the_published_batch_and_get_the_tower(world, cluster, script, per_device):
    # the user's own DeepSpeed env file: kept as it is and still forwarded
    user_env = cluster / ".deepspeed_env"
    user_env.write_text("NCCL_SOCKET_IFNAME=eth0\n\nMY_CLUSTER_SETTING=a b\n")
    args, log = dry_run(world, cluster, script, HF_HUB_OFFLINE="1")
    assert flag(args, "-w") == "node-1,node-2"  # both nodes of the hostfile
    # 256 (stage 1) or 128 (stage 2) over 16 ranks: per-device <= the script's default, no accumulation
    assert flag(args, "--per_device_train_batch_size") == per_device
    assert flag(args, "--gradient_accumulation_steps") == "1"
    assert f"per-device {per_device} x 16 ranks x accumulation 1" in log
    # pdsh runs one shell line on every node: the exports precede the rank launcher there
    remote = " ".join(args[args.index("-w") + 2:])
    launch = remote.index("deepspeed.launcher.launch")
    for export in (f"export CLIPMOE_VISION_TOWER={world.tower};", "export HF_HUB_OFFLINE=1;",
                   "export NCCL_SOCKET_IFNAME=eth0;", 'export MY_CLUSTER_SETTING="a b";'):
        assert 0 <= remote.find(export) < launch, (export, remote[:launch])
    assert "--node_rank=%n" in remote  # pdsh substitutes each node's rank: node-2 is rank 1
    assert user_env.read_text() == "NCCL_SOCKET_IFNAME=eth0\n\nMY_CLUSTER_SETTING=a b\n"
    assert not [n for n in os.listdir(cluster / "tmp") if n.startswith("clipmoe-deepspeed-env")]  # removed at exit


def test_accumulation_keeps_the_global_batch_when_the_ranks_need_it(world, cluster):
    # 2 nodes x 8 ranks with PER_DEVICE_BATCH=4: 256 = 4 x 16 x 4
    args, _ = dry_run(world, cluster, "pretrain.sh", PER_DEVICE_BATCH="4")
    assert (flag(args, "--per_device_train_batch_size"), flag(args, "--gradient_accumulation_steps")) == ("4", "4")
