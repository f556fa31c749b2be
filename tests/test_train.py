"""The training wrapper's records: settings saved beside the weights carry no machine paths."""

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


def test_train_refuses_bad_input_before_training(tmp_path, monkeypatch):
    """A missing dataset or start model, an absent GPU, an unwritable bundle place: one line, nothing trained."""
    import pytest

    from czii_kaggle import offline, train as train_mod
    from czii_kaggle.errors import CziiInputError

    monkeypatch.setattr(offline, "import_ultralytics", lambda: pytest.fail("training started"))
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text("path: .\ntrain: images/train\nval: images/val\n")
    (tmp_path / "a_file").write_text("x")
    cases = [
        (dict(data_yaml=tmp_path / "none.yaml"), "none.yaml: no such dataset file"),
        (dict(config=TrainConfig(model=str(tmp_path / "nope.pt"))), "nope.pt: no such model file"),
        (dict(config=TrainConfig(model="nope.pt")), "nope.pt: no such model file"),
        (dict(out_dir=tmp_path / "a_file"), "a_file: exists and is a file"),
        (dict(config=TrainConfig(device="99")), "device '99': this machine has"),
    ]
    for kwargs, message in cases:
        args = dict(data_yaml=data_yaml, out_dir=tmp_path / "bundle", config=TrainConfig()) | kwargs
        with pytest.raises(CziiInputError, match=message):
            train_mod.train(**args)
    for bad in ("epochs", "imgsz", "batch"):
        with pytest.raises(ValueError, match=bad):
            TrainConfig(**{bad: 0})
    assert not (tmp_path / "bundle").exists()


def test_train_hands_the_schedule_settings_to_ultralytics(tmp_path, monkeypatch):
    """Optimizer, learning rate and warmup (0 for a short fine-tune) reach Ultralytics' trainer as given."""
    import types

    import pytest

    from czii_kaggle import offline, train as train_mod

    seen = {}

    class Stop(Exception):
        pass

    class FakeYOLO:
        def __init__(self, model):
            seen["model"] = model

        def train(self, **kwargs):
            seen.update(kwargs)
            raise Stop

    monkeypatch.setattr(offline, "import_ultralytics", lambda: types.SimpleNamespace(YOLO=FakeYOLO))
    monkeypatch.setattr(offline, "set_cpu_threads", lambda n=None: 1)
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text("path: .\ntrain: images/train\nval: images/val\n")
    config = TrainConfig(model="yolo11n.yaml", device="cpu", optimizer="AdamW", lr0=0.0007, warmup_epochs=0.0)
    with pytest.raises(Stop):
        train_mod.train(data_yaml, tmp_path / "bundle", config)
    assert (seen["optimizer"], seen["lr0"], seen["warmup_epochs"]) == ("AdamW", 0.0007, 0.0)
    assert TrainConfig().warmup_epochs == 3.0 and config.record()["warmup_epochs"] == 0.0
