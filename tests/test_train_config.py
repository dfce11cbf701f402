"""Trainer configuration and bad-input errors that need no Megatron process."""
import gin
import pytest

from launch import REPO, run_torchrun
from train_fixtures import write_dataset

from sidgr.training.config import ModelConfig, parse_config


def test_unknown_parameter_of_a_config_is_an_error():
    with pytest.raises(ValueError, match="bogus"):
        parse_config(None, ["ModelConfig.bogus = 3"])


def test_unknown_configurable_is_an_error():
    with pytest.raises(ValueError):
        parse_config(None, ["NoSuchConfig.x = 3"])


def test_binding_of_a_configurable_the_trainer_never_builds_is_an_error():
    @gin.configurable
    def stray_helper(x=1):
        return x

    with pytest.raises(ValueError, match="stray_helper"):
        parse_config(None, ["stray_helper.x = 3"])
    with pytest.raises(ValueError, match="never used"):
        parse_config(None, ["train/ModelConfig.hidden_size = 3"])  # scoped: nothing builds that scope


def shipped_trainer_configs(overrides=()):
    """(name, the configs it binds) for every shipped trainer gin file (the LM's: test_lm)."""
    from sidgr.training.config import load_configs

    for path in sorted((REPO / "configs").glob("*.gin")):
        if not path.stem.startswith("lm_"):
            yield path.stem, load_configs(str(path), list(overrides))
    gin.clear_config()


def test_config_files_parse_and_bind_every_dataclass():
    names = []
    for name, cfgs in shipped_trainer_configs(["ModelConfig.num_layers = 3"]):
        names.append(name)
        assert cfgs["model"].num_layers == 3
        cfgs["data"].check(dp_size=2 if cfgs["data"].global_batch_size % 2 == 0 else 1)
    assert {"tiny_ci", "ml100k", "beauty", "beauty_sasrec", "ml1m_sidinput", "synth_large"} <= set(names)


def test_shipped_item_baselines_bind_no_sid_gr_setting():
    """The item baselines and SID-GR share a per-dataset base file, never each other's: SID-GR's rows with only
    their last items as targets (session 20's configs/ml1m.gin) once leaked into the baselines through an include,
    and the README reports those trained with every item of a row a target."""
    item_configs = {name: (cfgs["data"].targets_per_window, cfgs["model"].history, cfgs["model"].dense_weight)
                    for name, cfgs in shipped_trainer_configs() if cfgs["model"].kind == "item"}
    assert {"ml1m_sasrec", "ml1m_sidinput", "beauty_sasrec", "ml100k_sasrec"} <= set(item_configs)
    assert set(item_configs.values()) == {(0, "codes", 0.0)}, item_configs


@pytest.mark.dist
@pytest.mark.slow
def test_mapping_that_disagrees_with_the_config_fails_before_training(tmp_path):
    """End to end through `sidgr train` (which execs torchrun): one line naming the file, field and value."""
    paths = write_dataset(tmp_path / "data", num_users=8)
    proc = run_torchrun("sidgr.cli", 1, "train", "--nproc", "1", "--config", "configs/tiny_ci.gin",
                        f'TrainerConfig.run_dir="{tmp_path / "run"}"', f'DataConfig.train_path="{paths["train"]}"',
                        f'DataConfig.valid_path="{paths["valid"]}"', f'DataConfig.mapping_path="{paths["mapping"]}"',
                        "ModelConfig.codebook_sizes=(8, 8, 5)", timeout=120, check=False)
    assert proc.returncode != 0
    err = [line for line in proc.stderr.splitlines() if "sidgr train: error" in line]
    assert err, proc.stderr[-2000:]
    assert "sids.json" in err[0] and "codebook_sizes=[8, 8, 4]" in err[0] and "[8, 8, 5]" in err[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_mapping_level_count_mismatch_names_the_levels(tmp_path):
    from sidgr.errors import InputError
    from sidgr.sid.mapping import SIDMapping
    from sidgr.training.task import config_codebook_sizes

    paths = write_dataset(tmp_path / "data", num_users=8)
    mapping = SIDMapping.load(paths["mapping"])
    with pytest.raises(InputError, match=r"sids.json: levels=3: the config expects 2 levels"):
        config_codebook_sizes(ModelConfig(codebook_sizes=(8, 8)), mapping)
    assert config_codebook_sizes(ModelConfig(codebook_sizes=()), mapping) == (8, 8, 4)
    assert config_codebook_sizes(ModelConfig(codebook_sizes=(8, 8, 4)), mapping) == (8, 8, 4)


def test_resume_ignores_temporaries_and_incomplete_checkpoints(tmp_path):
    from sidgr.training.checkpoint import TRAINER_STATE, _remove_stale_temporaries, latest_checkpoint

    root = tmp_path / "checkpoints"
    assert latest_checkpoint(tmp_path) is None
    for name, complete in (("iter_0000004", True), ("iter_0000008", True), ("iter_0000012", False),
                           (".iter_0000016.abc123.tmp", True)):
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / TRAINER_STATE).write_bytes(b"x")
            (root / name / "arch.json").write_text("{}")
    # a killed save leaves only a temporary (or, before its rename, nothing named iter_*): never picked
    assert latest_checkpoint(tmp_path).name == "iter_0000008"
    _remove_stale_temporaries(root)
    assert sorted(p.name for p in root.iterdir()) == ["iter_0000004", "iter_0000008", "iter_0000012"]


def test_print_config_shows_every_effective_value_and_starts_nothing(tmp_path, capsys):
    from sidgr.cli import main

    rc = main(["train", "--config", "configs/ml100k.gin", "--print-config", "TrainerConfig.train_steps=7",
               f"TrainerConfig.run_dir='{tmp_path / 'run'}'", "DataConfig.train_path='/nonexistent.parquet'"])
    out = capsys.readouterr().out
    assert rc == 0 and not (tmp_path / "run").exists()  # no data check, no run dir, no torchrun
    assert "TrainerConfig.train_steps = 7" in out and "ModelConfig.hidden_size = 128" in out
    assert "OptimizerConfig.lr = " in out and "DataConfig.train_path = '/nonexistent.parquet'" in out


@pytest.mark.parametrize("binding, message", [
    ("TrainerConfig.run_dir=runs/x", "a string needs quotes: TrainerConfig.run_dir='runs/x'"),
    ("ModelConfig.hidden_size='abc'", "ModelConfig.hidden_size='abc': expected an integer"),
    ("ModelConfig.hidden_size=True", "ModelConfig.hidden_size=True: expected an integer"),
    ("OptimizerConfig.lr='fast'", "OptimizerConfig.lr='fast': expected a number"),
    ("ModelConfig.head_mode='shard'", "ModelConfig.head_mode='shard': expected one of 'shared', 'per_level'"),
    ("DataConfig.shuffle=1", "DataConfig.shuffle=1: expected True or False"),
    ("TrainerConfig.run_dir=3", "TrainerConfig.run_dir=3: expected a quoted string"),
])
def test_wrong_value_types_are_one_line_errors_before_anything_starts(tmp_path, capsys, binding, message):
    from sidgr.cli import main

    assert main(["train", "--config", "configs/ml100k.gin", f"TrainerConfig.run_dir='{tmp_path / 'run'}'",
                 binding]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("nproc, bindings, message", [
    (1, ["ModelConfig.hidden_size=30"],
     "ModelConfig.hidden_size=30: not divisible by ModelConfig.num_attention_heads=4"),
    (2, ["ParallelConfig.tensor_parallel=2", "ModelConfig.num_attention_heads=3", "ModelConfig.hidden_size=24"],
     "ModelConfig.num_attention_heads=3: not divisible by ParallelConfig.tensor_parallel=2"),
    (2, ["ParallelConfig.tensor_parallel=2", "ModelConfig.ffn_hidden_size=33"],
     "ModelConfig.ffn_hidden_size=33: not divisible by ParallelConfig.tensor_parallel=2"),
    (2, ["ParallelConfig.tensor_parallel=4"], "ParallelConfig.tensor_parallel=4: must divide the number of processes"),
    (2, ["DataConfig.global_batch_size=7"],
     "DataConfig.global_batch_size=7: not divisible by the data-parallel size 2"),
    (1, ["ModelConfig.dense_weight=1.0", 'ModelConfig.history="codes"'],
     "ModelConfig.dense_weight=1.0: needs ITEM-token history (ModelConfig.history other than 'codes')"),
    (1, ["ModelConfig.dense_weight=-1.0", 'ModelConfig.history="rqsum"'], "ModelConfig.dense_weight=-1.0: must be >= 0"),
    (1, ["ModelConfig.dense_weight=0.0", "ModelConfig.retrieval_dense_weight=2.0"],
     "ModelConfig.retrieval_dense_weight=2.0: must be >= 0, and needs ModelConfig.dense_weight > 0"),
    (1, ["ModelConfig.dense_weight=1.0", 'ModelConfig.history="prefixn"', 'ModelConfig.dense_head="table"'],
     "ModelConfig.dense_head='table': 'table' needs ModelConfig.dense_weight > 0 and '+id' history"),
    (1, ["ModelConfig.dense_weight=0.0", 'ModelConfig.history="rqsum+id"', 'ModelConfig.dense_head="table"'],
     "ModelConfig.dense_head='table': 'table' needs ModelConfig.dense_weight > 0 and '+id' history"),
])
def test_impossible_parallel_layouts_are_one_line_errors_before_torchrun(tmp_path, capsys, nproc, bindings, message):
    from sidgr.cli import main

    assert main(["train", "--nproc", str(nproc), "--config", "configs/ml100k.gin",
                 f"TrainerConfig.run_dir='{tmp_path / 'run'}'", *bindings]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()


def test_resume_may_change_how_long_and_fast_but_not_what_it_trains(tmp_path, capsys):
    from sidgr.cli import main
    from sidgr.run_layout import TRAINER_STATE
    from sidgr.training.config import load_configs
    from sidgr.training.run_dir import check_resume_config

    run = tmp_path / "run"
    args = ["--config", "configs/ml100k.gin", f"TrainerConfig.run_dir='{run}'"]
    ckpt = run / "checkpoints" / "iter_0000400"
    ckpt.mkdir(parents=True)
    (ckpt / TRAINER_STATE).write_bytes(b"x")
    (ckpt / "arch.json").write_text("{}")
    (ckpt / "config.gin").write_text(load_configs(args[1], args[2:])["config_str"])
    (run / "metrics.jsonl").write_text('{"step": 400, "loss": 1.0}\n')
    for binding, ok in [("TrainerConfig.train_steps=800", True), ("OptimizerConfig.lr=1e-4", True),
                        ("DataConfig.num_workers=2", True), ("ModelConfig.dropout=0.0", False),
                        ("DataConfig.max_items=20", False), ("ParallelConfig.tensor_parallel=2", False)]:
        config_str = load_configs(args[1], [*args[2:], binding])["config_str"]
        if ok:
            changes = check_resume_config(run, config_str)
            assert len(changes) == 1 and changes[0].startswith(binding.split("=")[0] + ":"), changes
        else:
            assert main(["train", "--nproc", "2", "--resume", *args, binding]) == 1
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and binding.split("=")[0] in err[0] and "start a new run_dir" in err[0], err
    assert (ckpt / "config.gin").read_text() == load_configs(args[1], args[2:])["config_str"]  # nothing written
    # a checkpoint of an older release, without a field added since, resumes with that field at its default
    older = "\n".join(x for x in (ckpt / "config.gin").read_text().splitlines() if "ModelConfig.history" not in x)
    (ckpt / "config.gin").write_text(older)
    assert check_resume_config(run, load_configs(args[1], args[2:])["config_str"]) == []
