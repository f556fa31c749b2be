"""Training wrapper: offline-safe Ultralytics YOLO on a slice dataset from :mod:`czii_kaggle.dataset`.

The model is built from a yaml (the project's pico YOLO11, ``czii_kaggle/model_cfg/yolo11p-czii.yaml``,
by default; no weight download) or fine-tuned from a ``.pt``;
augmentations respect tomograms: flips in x-y (90-degree rotations are baked into
the dataset by ``DatasetConfig.rot90``), mild scale and translation, no colour jitter,
no shear or perspective (particle size in pixels is a real cue).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from . import offline, outputs
from .bundle import MODEL_FILE, write_training_config
from .errors import CziiInputError
from .preprocess import PreprocessConfig

#: The folder holding the ``czii_kaggle`` package (the repository in a development install).
PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: The project's own model yaml: YOLO11 at a pico width, six classes (the shipped model's).
MODEL_YAML = Path(__file__).resolve().parent / "model_cfg" / "yolo11p-czii.yaml"


@dataclass(frozen=True)
class TrainConfig:
    """Options of :func:`train`; the defaults are the shipped model's recipe
    (``czii_kaggle/recipes/shipped.json``) except ``device`` and ``workers``, the machine's.

    Attributes
    ----------
    model : str
        Ultralytics model yaml (built from scratch) or a local ``.pt`` to fine-tune.
    epochs, imgsz, batch : int
        ``imgsz`` in pixels = voxels (images are never rescaled beyond letterboxing).
    seed : int
    device : str
        ``"auto"`` (first GPU if any, else CPU), ``"cpu"``, ``"0"``, ``"0,1"``... (see :func:`resolve_device`)
    workers : int
        Data-loader workers.
    patience : int
        Early stopping patience in epochs.
    optimizer, lr0 : str, float
        Ultralytics optimizer; ``lr0`` applies only when ``optimizer`` is not ``"auto"``
        (auto chooses AdamW or SGD and its learning rate from the schedule length).
    warmup_epochs : float
        Ultralytics' learning-rate warmup (its bias learning rate starts at 0.1); 0 turns it
        off, e.g. for a short fine-tune of a trained model.
    fliplr, flipud : float
        Flip probabilities (x-y flips are physical symmetries of a tomogram slice).
    scale, translate, mosaic : float
        Ultralytics augmentation strengths.
    amp : bool
        Mixed precision on GPU (its check runs offline; ignored on CPU).
    stop_after_epochs : int or None
        Stop after this many epochs of the ``epochs``-long schedule (the learning rate still
        follows ``epochs``), as a run stopped by hand; None: train every epoch.
    """

    model: str = str(MODEL_YAML)
    epochs: int = 30
    imgsz: int = 320
    batch: int = 32
    seed: int = 0
    device: str = "auto"
    workers: int = 2
    patience: int = 100
    optimizer: str = "auto"
    lr0: float = 0.01
    warmup_epochs: float = 3.0
    fliplr: float = 0.5
    flipud: float = 0.5
    scale: float = 0.1
    translate: float = 0.1
    mosaic: float = 1.0
    amp: bool = True
    stop_after_epochs: int | None = None

    def __post_init__(self):
        for name in ("epochs", "imgsz", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        if self.stop_after_epochs is not None and not 1 <= self.stop_after_epochs <= self.epochs:
            raise ValueError(f"stop_after_epochs must be in 1..epochs ({self.epochs}), not {self.stop_after_epochs}")

    def to_dict(self) -> dict:
        return asdict(self)

    def record(self) -> dict:
        """:meth:`to_dict` for saved records: a ``model`` file inside the project is given
        relative to the project's root (``czii_kaggle/model_cfg/...``, ``runs/...``), never
        as this machine's absolute path."""
        d = self.to_dict()
        path = Path(self.model)
        if path.is_file():
            try:
                d["model"] = path.resolve().relative_to(PROJECT_ROOT).as_posix()
            except ValueError:
                pass
        return d


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"0"`` (the first GPU) when one is visible, else ``"cpu"``.

    Auto never picks several GPUs: Ultralytics trains on several through a DDP child
    process that imports ultralytics afresh, outside :mod:`czii_kaggle.offline`'s
    switches. Ask for ``"0,1"`` explicitly where the network is no concern.
    """
    if device != "auto":
        return device
    import torch

    return "0" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> str:
    """``device`` (as :func:`resolve_device` gives it) when this machine has it, else a one-line error."""
    if device in ("cpu", "mps"):
        return device
    import torch

    n_gpus = torch.cuda.device_count()
    if not all(i.strip().isdigit() and int(i) < n_gpus for i in device.replace("cuda:", "").split(",")):
        visible = f"GPUs 0..{n_gpus - 1}" if n_gpus else "no GPU"
        raise CziiInputError(None, f"device {device!r}: this machine has {visible} (use auto, cpu, 0, 0,1 ...)")
    return device


def _dataset_meta(data_yaml: Path) -> dict:
    """The ``czii`` section of a dataset's ``data.yaml`` (empty for a foreign dataset); bad input named."""
    if not data_yaml.is_file():
        raise CziiInputError(data_yaml, "no such dataset file (build one with `czii-kaggle build-dataset`)")
    try:
        doc = yaml.safe_load(data_yaml.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CziiInputError(data_yaml, f"unreadable dataset YAML: {exc}") from None
    if not isinstance(doc, dict) or not {"train", "val"} <= set(doc):
        raise CziiInputError(data_yaml, "not a YOLO dataset file (no 'train' and 'val' entries)")
    meta = doc.get("czii", {})
    return meta if isinstance(meta, dict) else {}


def train(data_yaml: str | Path, out_dir: str | Path, config: TrainConfig = TrainConfig()) -> Path:
    """Train a detector on ``data_yaml``; write ``model.pt`` and ``czii_config.json`` into ``out_dir``.

    ``czii_config.json`` records the preprocessing and labelling the dataset was built
    with (read from ``data.yaml``) so inference reuses training's choices, plus this
    training config.

    Returns
    -------
    Path of the saved ``model.pt``.
    """
    data_yaml = Path(data_yaml).resolve()
    out_dir = Path(out_dir).resolve()
    meta = _dataset_meta(data_yaml)
    start = Path(config.model)
    if not start.is_file() and (start.suffix == ".pt" or start.parent != Path(".")):
        raise CziiInputError(start, "no such model file (a .pt to fine-tune or a model yaml)")
    outputs.check_writable(out_dir, folder=True)  # before hours of training, not after
    device = check_device(resolve_device(config.device))
    ultralytics = offline.import_ultralytics()
    out_dir.mkdir(parents=True, exist_ok=True)
    if device == "cpu":
        offline.set_cpu_threads()
    model = ultralytics.YOLO(config.model)
    if config.stop_after_epochs is not None:
        def stop_early(trainer, n=config.stop_after_epochs):
            if trainer.epoch + 1 >= n:
                trainer.stop = True

        model.add_callback("on_fit_epoch_end", stop_early)
    model.train(
        data=str(data_yaml),
        epochs=config.epochs,
        imgsz=config.imgsz,
        batch=config.batch,
        seed=config.seed,
        deterministic=True,
        device=device,
        workers=config.workers,
        patience=config.patience,
        optimizer=config.optimizer,
        lr0=config.lr0,
        warmup_epochs=config.warmup_epochs,
        fliplr=config.fliplr,
        flipud=config.flipud,
        scale=config.scale,
        translate=config.translate,
        mosaic=config.mosaic,
        degrees=0.0,
        shear=0.0,
        perspective=0.0,
        mixup=0.0,
        hsv_h=0.0,
        hsv_s=0.0,
        hsv_v=0.2,
        amp=config.amp,
        project=str(out_dir),
        name="ultralytics",
        exist_ok=True,
        plots=False,
        verbose=False,
    )
    weights_dir = out_dir / "ultralytics" / "weights"
    best = weights_dir / "best.pt"
    if not best.exists():
        best = weights_dir / "last.pt"
    model_path = out_dir / MODEL_FILE
    outputs.copy_file(best, model_path)
    dataset_cfg = meta.get("config", {})
    train_record = config.record()
    write_training_config(out_dir, {
        "preprocess": dataset_cfg.get("preprocess", PreprocessConfig().to_dict()),
        "labels": dataset_cfg.get("labels", {}),
        "train": train_record,
        "train_runs": meta.get("train_runs", []),
        "val_runs": meta.get("val_runs", []),
    })
    return model_path
