"""The training wrapper's records: settings saved beside the weights carry no machine paths."""
from pathlib import Path

from czii_kaggle.train import PROJECT_ROOT, TrainConfig, resolve_device


def test_record_gives_project_files_relative_to_the_project(tmp_path):
    cfg_yaml = PROJECT_ROOT / "czii_kaggle" / "model_cfg" / "yolo11p-czii.yaml"
    assert TrainConfig(model=str(cfg_yaml)).record()["model"] == "czii_kaggle/model_cfg/yolo11p-czii.yaml"
    shipped = PROJECT_ROOT / "czii_kaggle" / "models" / "model.pt"
    assert TrainConfig(model=str(shipped)).record()["model"] == "czii_kaggle/models/model.pt"
    outside = tmp_path / "start.pt"
    outside.write_bytes(b"x")
    assert TrainConfig(model=str(outside)).record()["model"] == str(outside)  # not ours: kept as given
    assert TrainConfig(model="yolo11n.yaml").record()["model"] == "yolo11n.yaml"  # a name, not a file
    rec = TrainConfig(model=str(cfg_yaml), epochs=7).record()
    assert rec["epochs"] == 7 and not any(str(PROJECT_ROOT) in str(v) for v in rec.values())


def test_resolve_device_keeps_explicit_choices():
    assert resolve_device("cpu") == "cpu" and resolve_device("0,1") == "0,1"
    assert resolve_device("auto") in ("cpu", "0")
