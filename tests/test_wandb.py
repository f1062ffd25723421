"""logging.wandb: the scalars that go to TensorBoard go to Weights & Biases under the same names and steps, with
the resolved config; offline without an API key. Read back from the offline run's own file."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import carrystate
from carrystate.config import ConfigError, load_config
from tests.helpers import SMALL_TMAZE

BLOCK = 32768  # the .wandb file is a LevelDB-style log: a 7-byte file header, then 32 KiB blocks of chunks


def wandb_records(path: Path):
    """Every protobuf Record in an offline run's .wandb file, read without wandb's own code (chunk header: crc32,
    length uint16, type uint8 with 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, parts = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):  # block trailer or padding
            pos += left
            continue
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def test_wandb_offline_run_logs_the_tensorboard_scalars_and_the_config(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb").mkdir()
    run_dir = tmp_path / "my-run"
    try:
        trainer = carrystate.train(None, [*SMALL_TMAZE, "logging.wandb=true"], run_dir=run_dir, iterations=2)
    finally:
        wandb.teardown()  # the W&B service process goes with the test

    (offline,) = (tmp_path / "wandb" / "wandb").glob("offline-run-*/run-*.wandb")  # offline: no key was set
    records = list(wandb_records(offline))
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.display_name == "my-run" and run.project == "carrystate"
    logged_config = {u.key: json.loads(u.value_json) for u in run.config.update if u.key != "_wandb"}
    assert logged_config == trainer.run_cfg.model_dump(mode="json")

    history = [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}  # a/b is nested
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    tb = EventAccumulator(str(run_dir / "tb"))
    tb.Reload()
    tags = set(tb.Tags()["scalars"])
    assert len(history) == 2
    for row in history:
        assert {k for k in row if not k.startswith("_")} == tags
    assert [row["_step"] for row in history] == [e.step for e in tb.Scalars("charts/SPS")] == [512, 1024]
    for tag in tags:
        assert [row[tag] for row in history] == pytest.approx([e.value for e in tb.Scalars(tag)], rel=1e-6)


def test_wandb_without_the_package_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr("carrystate.monitor.importlib.util.find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r'logging.wandb=true needs the wandb package: pip install -e ".\[wandb\]"'):
        carrystate.Trainer(load_config(None, [*SMALL_TMAZE, "logging.wandb=true"]), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
