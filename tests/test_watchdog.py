"""The trainer's watchdog: each failure made to happen on purpose is diagnosed in one line (log, TensorBoard,
results.json / watchdog.json), ``trainer.watchdog=stop`` stops keeping the last good checkpoint, and a healthy run
fires nothing."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from frtrain.config import WatchConfig, check_command_line, validate_train
from frtrain.engine import schedule as schedule_module
from frtrain.engine import trainer as trainer_module
from frtrain.engine.watchdog import Watchdog, WatchdogStopped, chance_loss, embedding_spread, gradient_norm
from frtrain.errors import ConfigError
from frtrain.heads import ArcFace
from frtrain.train import train

from conftest import TINY_DATA, TINY_EVAL, compose_train


def _run(tmp_path, name, extra, evaluation=False):
    out = tmp_path / name
    train(compose_train(TINY_DATA + (TINY_EVAL if evaluation else ["eval=none"]) + [f"output_dir={out}"] + extra))
    return out


def _fired(out):
    return {f["check"]: f for f in json.loads((out / "watchdog.json").read_text())["fired"]}


def _watchdog(**options):
    return Watchdog("warn", WatchConfig(**options), "", None, total_steps=1000, warmup_steps=0)


# -- the measures, on numbers worked out by hand -----------------------------------------------------------------

def test_embedding_spread_is_the_mean_per_dimension_std_of_unit_rows():
    x = torch.tensor([[3.0, 4.0], [6.0, 8.0], [0.0, 2.0]])
    unit = np.array([[0.6, 0.8], [0.6, 0.8], [0.0, 1.0]])
    assert embedding_spread(x) == pytest.approx(np.mean(unit.std(axis=0, ddof=1)), rel=1e-6)
    assert embedding_spread(torch.ones(5, 3)) == 0.0


def test_gradient_norm_is_the_l2_norm_of_all_gradients_unscaled():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0, 12.0])
    assert gradient_norm([a, b]) == pytest.approx(13.0)
    assert gradient_norm([a, b], scale=2.0) == pytest.approx(6.5)


def test_chance_loss_is_the_loss_with_shuffled_labels_and_leaves_the_head_as_it_was():
    torch.manual_seed(0)
    head = ArcFace(embedding_size=8, num_classes=5, scale=16.0)
    emb, labels = torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    state = {k: v.clone() for k, v in head.state_dict().items()}
    rng = torch.get_rng_state()
    value = chance_loss(head, emb, labels)
    generator = torch.Generator().manual_seed(0)  # the same permutations, written out
    with torch.no_grad():
        expected = np.mean([float(head(emb, labels[torch.randperm(6, generator=generator)])) for _ in range(4)])
    assert value == pytest.approx(expected, rel=1e-6)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, state[k]) for k, v in head.state_dict().items())


def test_a_gradient_spike_fires_against_the_running_median_and_only_after_enough_history():
    w = _watchdog(spike_factor=100.0)
    for step in range(1, 20):  # 19 steps of history: too few to judge
        w.step(step, 0.1, 0.1, 1.0 + 0.01 * step)
    w.step(20, 0.1, 0.1, 1e6)
    assert w.fired == []
    w = _watchdog(spike_factor=100.0)
    for step in range(1, 31):
        w.step(step, 0.1, 0.1, 2.0)
    w.step(31, 0.1, 0.1, 199.0)  # 99.5x the median: not a spike
    assert w.fired == []
    w.step(32, 0.1, 0.1, 250.0)
    assert [f["check"] for f in w.fired] == ["grad_spike"] and w.fired[0]["median"] == pytest.approx(2.0)


def test_a_loss_that_has_not_fallen_since_the_warm_up_fires_only_while_the_learning_rate_is_up():
    w = _watchdog(flat_window=10, flat_tolerance=0.05)
    for step in range(1, 31):  # falling 2% per step, then a plateau far below the start: not this failure
        w.micro_batch(step, 5.0 * 0.98 ** min(step, 15), torch.randn(4, 3))
        w.step(step, 0.1, 0.1, None)
    assert w.fired == []
    w = _watchdog(flat_window=10)
    w.step(1, 1.0, 1.0, None)  # the peak rate; no loss reported for this step
    for step in range(2, 17):
        w.micro_batch(step, 5.0, torch.randn(4, 3))
        w.step(step, 0.05, 0.05, None)  # flat, but at 5% of the peak rate
    assert w.fired == []
    for step in range(17, 22):
        w.micro_batch(step, 4.9, torch.randn(4, 3))  # 2% below the first five steps: less than 5%
        w.step(step, 0.5, 0.5, None)
    assert [f["check"] for f in w.fired] == ["loss_flat"] and w.fired[0]["step"] == 21
    assert w.fired[0]["first"] == pytest.approx(5.0) and w.fired[0]["latest"] == pytest.approx(4.9)


def test_bad_watch_settings_are_refused_with_the_key_named():
    with pytest.raises(ConfigError, match="trainer.watchdog='loud': expected warn, stop or off"):
        validate_train(compose_train(TINY_DATA + ["trainer.watchdog=loud"]))
    with pytest.raises(ConfigError, match="trainer.watch.flat_window"):
        validate_train(compose_train(TINY_DATA + ["trainer.watch.flat_window=2"]))
    with pytest.raises(ConfigError, match=r"trainer.watch.spike: no such key; .*spike_factor"):
        check_command_line("train", ["trainer.watch.spike=3"])
    assert OmegaConf.to_container(compose_train(TINY_DATA).trainer.watch)["spike_factor"] == 100.0


# -- failures made to happen in a real run -----------------------------------------------------------------------

def test_a_learning_rate_of_0_stops_at_the_chance_check_keeping_the_last_good_checkpoint(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="frtrain"):
        with pytest.raises(WatchdogStopped, match=r"chance_loss at step 20: the loss is not below chance .*"
                                                  r"newest checkpoint: .*step-00000015\.pt"):
            _run(tmp_path, "lr0", ["optim.lr=0", "trainer.max_steps=200", "trainer.watchdog=stop",
                                   "trainer.checkpoint_every=5"])
    out = tmp_path / "lr0"
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*.pt"))[-1] == "step-00000015.pt"
    fired = _fired(out)
    assert list(fired) == ["chance_loss"] and fired["chance_loss"]["loss"] >= 0.99 * fired["chance_loss"]["chance_loss"]
    assert any("watchdog: the loss is not below chance at step 20" in r.getMessage() for r in caplog.records)
    assert not (out / "results.json").exists()  # a stopped run is not a finished one (frtrain-compare reuses those)


def test_a_schedule_that_never_steps_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.optim.lr_scheduler.LambdaLR, "step", lambda self, *a, **k: None)
    out = _run(tmp_path, "frozen_lr", ["trainer.max_steps=30"])
    fired = _fired(out)
    assert "lr_constant" in fired and fired["lr_constant"]["step"] == 2
    assert "the schedule is not stepping" in fired["lr_constant"]["message"]
    results = json.loads((out / "results.json").read_text())
    assert [f["check"] for f in results["watchdog"]] == list(fired)  # warn: the run finishes, results.json says it


def test_an_exploding_learning_rate_is_caught_as_a_gradient_spike_before_the_loss_turns_nan(tmp_path, monkeypatch):
    scheduled = schedule_module.WarmupPoly.__call__
    monkeypatch.setattr(schedule_module.WarmupPoly, "__call__",
                        lambda self, step: scheduled(self, step) * (1.0 if step < 40 else 1e3))
    with pytest.raises(WatchdogStopped, match=r"grad_spike at step 4\d: gradient norm spiked .* the median"):
        _run(tmp_path, "explode", ["head=softmax", "trainer.max_steps=80", "trainer.watchdog=stop"])
    spike = _fired(tmp_path / "explode")["grad_spike"]
    assert spike["grad_norm"] > 100 * spike["median"]


def test_constant_inputs_collapse_the_embeddings_and_verification_stays_at_chance(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "normalize_batch", lambda x, mean, std: torch.full(x.shape, 0.5))
    # an untrained model scores 55-65% on this synthetic set (random features): the bar is raised to tell it apart
    out = _run(tmp_path, "constant", ["trainer.max_steps=40", "eval.every_steps=20", "trainer.watch.chance_accuracy=0.7"],
               evaluation=True)
    fired = _fired(out)
    assert fired["collapse"]["step"] == 1 and fired["collapse"]["spread"] < 1e-3
    assert fired["chance_accuracy"]["step"] == 20 and fired["chance_accuracy"]["accuracy"] < 0.7
    assert "chance_loss" in fired  # the loss cannot fall below chance on inputs that carry no label
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    assert {"watchdog/collapse", "watchdog/chance_accuracy"} <= set(events.Tags()["scalars"])


def test_weights_that_never_update_give_a_flat_loss_while_the_learning_rate_is_not_zero(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.optim.SGD, "step", lambda self, *a, **k: None)
    out = _run(tmp_path, "frozen", ["trainer.max_steps=100", "trainer.watch.flat_window=20"])
    fired = _fired(out)
    assert fired["loss_flat"]["step"] == 20 and "are the weights updating" in fired["loss_flat"]["message"]
    assert math.isclose(fired["loss_flat"]["first"], fired["loss_flat"]["latest"], rel_tol=0.05)


@pytest.mark.slow  # arcface's healthy run is tests/test_train.py's short run; these are the other kinds of head
@pytest.mark.parametrize("head", ["softmax", "npt", "unpg"])
def test_a_healthy_run_fires_nothing(tmp_path, head):
    out = _run(tmp_path, head, [f"head={head}", "trainer.max_steps=200", "eval.every_steps=100"], evaluation=True)
    assert json.loads((out / "results.json").read_text())["watchdog"] == []
    assert not (out / "watchdog.json").exists()
