"""What `medjp train` decides from its launch (rank, FSDP asked for, accelerator present) on either kind of host,
without launching: the 2-process runs themselves are in test_train_distributed.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medjp_agent.cli import app
from medjp_agent.training import distributed
from medjp_agent.training.config import TrainConfig
from medjp_agent.training.distributed import Launch, LaunchError

runner = CliRunner()
GPU_FSDP = {"ACCELERATE_USE_FSDP": "true", "FSDP_SYNC_MODULE_STATES": "true", "FSDP_ACTIVATION_CHECKPOINTING": "true",
            "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}


@pytest.fixture()
def host(monkeypatch: pytest.MonkeyPatch):
    """Pretend the host has an accelerator, or not, and run under the given launch environment."""
    for name in GPU_FSDP:
        monkeypatch.delenv(name, raising=False)

    def make(accelerator: bool, env: dict[str, str] | None = None) -> None:
        monkeypatch.setattr(distributed, "has_accelerator", lambda: accelerator)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)

    return make


def test_a_plain_process_is_rank_zero_and_unsharded(host):
    host(accelerator=False)
    launch = Launch.detect()
    assert launch == Launch() and launch.main and not launch.sharded and launch.notes(TrainConfig()) == []


def test_gpu_fsdp_config_on_a_cpu_host_says_why_in_one_line(host):
    host(accelerator=False, env=GPU_FSDP)
    with pytest.raises(LaunchError, match=r"config is for GPUs: .*no accelerator; .*medjp train fsdp-config --cpu"):
        Launch.detect().notes(TrainConfig())
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 2 and result.output.count("error:") == 1
    assert "this host has no accelerator" in " ".join(result.output.split())


def test_other_ranks_fail_silently(host):
    """Every process meets the same error; only rank 0 prints it."""
    host(accelerator=False, env={**GPU_FSDP, "RANK": "1", "LOCAL_RANK": "1"})
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 2 and result.output == ""


def test_gpu_fsdp_config_on_a_gpu_host_shards(host):
    host(accelerator=True, env=GPU_FSDP)
    launch = Launch.detect()
    cfg = TrainConfig()
    assert launch.sharded and launch.device_map(cfg) is None  # FSDP places the shards
    assert not launch.trainer_checkpointing(cfg)  # FSDP checkpoints inside its units
    assert launch.notes(cfg) == ["2 processes: global batch 32 (batch_size 4 x grad_accum 4 x 2)"]
    off = cfg.replace(gradient_checkpointing=False)
    assert "FSDP checkpoints activations" in launch.notes(off)[-1]


def test_cpu_fsdp_config_runs_as_ddp_and_says_so(host):
    host(accelerator=False, env={**GPU_FSDP, "FSDP_SYNC_MODULE_STATES": "false"})
    launch = Launch.detect()
    assert not launch.sharded and launch.trainer_checkpointing(TrainConfig())
    assert launch.notes(TrainConfig())[1].startswith("FSDP on CPU: accelerate shards only on accelerators")


@pytest.mark.parametrize("accelerator, device_map", [(True, {"": 1}), (False, None)])
def test_ddp_puts_a_4bit_base_on_each_process_gpu(host, accelerator: bool, device_map):
    host(accelerator=accelerator, env={"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    launch = Launch.detect()
    assert launch.device_map(TrainConfig()) == device_map
    assert launch.device_map(TrainConfig(quantize=False)) is None


@pytest.mark.parametrize("sharded", [False, True])
def test_checkpointing_is_non_reentrant_and_ddp_skips_the_unused_search(sharded: bool):
    from medjp_agent.training.data import build_training_data, load_training_questions
    from medjp_agent.training.trainer import sft_config

    cfg = TrainConfig(validation_fraction=0.0, eval_data=())
    launch = Launch(fsdp=sharded, accelerator=sharded, fsdp_checkpointing=True, world_size=2)
    args = sft_config(cfg, build_training_data(cfg, load_training_questions(cfg)), launch)
    assert args.activation_checkpointing is not sharded  # under FSDP, FSDP's own checkpointing does it
    assert args.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert args.ddp_find_unused_parameters is False


@pytest.mark.parametrize("accelerator", [False, True])
def test_fsdp_config_for_gpus_and_for_cpu(host, tmp_path: Path, accelerator: bool):
    host(accelerator=accelerator)
    gpu = runner.invoke(app, ["train", "fsdp-config", "--out", str(tmp_path / "gpu.yaml")])
    assert gpu.exit_code == 0 and ("cannot run here" in gpu.output) is not accelerator
    cpu = runner.invoke(app, ["train", "fsdp-config", "--cpu", "--out", str(tmp_path / "cpu.yaml")])
    assert cpu.exit_code == 0 and "cannot run here" not in cpu.output
    gpu_cfg, cpu_cfg = (yaml.safe_load((tmp_path / f"{n}.yaml").read_text()) for n in ("gpu", "cpu"))
    assert (gpu_cfg["use_cpu"], cpu_cfg["use_cpu"]) == (False, True)
    assert gpu_cfg["fsdp_config"]["fsdp_activation_checkpointing"] is True
    changed = {k: v for k, v in cpu_cfg["fsdp_config"].items() if gpu_cfg["fsdp_config"][k] != v}
    assert changed == {"fsdp_cpu_ram_efficient_loading": False, "fsdp_sync_module_states": False,
                       "fsdp_offload_params": False}
