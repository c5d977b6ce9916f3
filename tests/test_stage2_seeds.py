"""benchmarks/stage2_seeds.py: the seed sweep changes the quickstart's own stage-2 command, nothing else."""
import dataclasses
import importlib.util
from pathlib import Path

import pytest

import quickstart
import train_ldm
from ldm.cli import parse_config
from pipelines.evaluate import _best_weight

_SPEC = importlib.util.spec_from_file_location(
    "stage2_seeds", Path(__file__).resolve().parents[1] / "benchmarks" / "stage2_seeds.py")
stage2_seeds = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(stage2_seeds)


def _train_config(argv):
    return parse_config(train_ldm.TrainConfig, argv[2:])  # drop "-m train_ldm"


def test_changes_replace_remove_and_add_flags_of_the_quickstart_command(tmp_path):
    vae = tmp_path / "my_vae"
    train, evaluation = stage2_seeds.run_commands(
        vae, tmp_path / "run", 3, ["--snr-floor", "0", "--lr", "2e-3", "--zero-terminal-snr", "--seed", "off"])
    changed = _train_config(train)

    cfg = quickstart.QuickstartConfig(output_dir=str(tmp_path / "run"), seed=3)
    commands = {name: argv for name, _, argv in quickstart.stage_commands(cfg, tmp_path / "run")}
    reference = _train_config(commands["stage2"])

    assert (reference.snr_floor, changed.snr_floor) == (0.1, 0)  # a value replaced, or added when not there
    assert (reference.lr, changed.lr) == (1e-3, 2e-3)
    assert not reference.zero_terminal_snr and changed.zero_terminal_snr
    assert changed.vae == str(vae) and (reference.seed, changed.seed) == (3, 0)  # "off" removed the flag
    differing = {f.name for f in dataclasses.fields(reference)
                 if getattr(reference, f.name) != getattr(changed, f.name)}
    assert differing == {"snr_floor", "lr", "zero_terminal_snr", "vae", "seed"}
    assert evaluation == commands["eval"]


def test_no_changes_gives_the_quickstart_command_on_the_given_vae(tmp_path):
    train, _ = stage2_seeds.run_commands(tmp_path / "v", tmp_path / "run", 0, [])
    cfg = quickstart.QuickstartConfig(output_dir=str(tmp_path / "run"))
    stage2 = quickstart.stage_commands(cfg, tmp_path / "run")[1][2]
    vae_at = stage2.index("--vae") + 1
    assert train == [*stage2[:vae_at], str(tmp_path / "v"), *stage2[vae_at + 1:]]


def test_a_value_without_a_flag_is_an_error():
    with pytest.raises(ValueError, match="follows no flag"):
        stage2_seeds.apply_changes(["--lr", "1e-3"], ["0.1"])


def test_seed_summary_reads_the_w_with_the_best_held_out_adherence():
    def entry(w, held_out, seen, position):
        rate = lambda r: {"rate": r}  # noqa: E731
        return {"w": w, "adherence": {"held_out": rate(held_out), "seen": rate(seen)},
                "attribute_accuracy": {"held_out": {"position": rate(position)},
                                       "seen": {"position": rate(position / 2)}}}
    sweep = [entry(0.0, 0.5, 0.9, 0.6), entry(2.0, 0.8, 0.7, 0.9), entry(4.0, 0.7, 0.95, 0.8)]
    summary = stage2_seeds.seed_summary({"sweep": sweep, "best": _best_weight(sweep)})
    assert summary == {"w": 2.0, "held_out": 0.8, "seen": 0.7, "position_held_out": 0.9,
                       "position_seen": 0.45}
