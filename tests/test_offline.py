"""czii_kaggle.offline: Ultralytics with every network touchpoint switched off.

Two kinds of proof:

* in this process, every entry of ``offline.TOUCHPOINTS`` is really in place (where it is
  defined and wherever Ultralytics re-imported it) and each replacement behaves offline;
* in a subprocess with no network (an empty network namespace via ``unshare -n`` where
  possible, and always an audit hook that records every socket connect / DNS look-up /
  urllib request) a tiny YOLO is built from yaml, trained one epoch with plots, saved,
  reloaded, run on a numpy image and plotted with a PIL font; nothing reaches for the
  network, nothing lands in the home folder, and asking for ``yolo11n.pt`` fails at once
  with the offline error.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import importlib.util

import pytest

from czii_kaggle import offline

# find_spec, not importorskip: a plain `import ultralytics` here would run its online check.
if importlib.util.find_spec("ultralytics") is None:
    pytest.skip("ultralytics is not installed", allow_module_level=True)

# --------------------------------------------------------------------------------------
# In-process unit checks
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ul(tmp_path_factory):
    """Ultralytics after configure_offline (config dir only used if not imported yet)."""
    offline.configure_offline(config_dir=tmp_path_factory.mktemp("ulcfg"))
    mod = offline.import_ultralytics()
    # Load the modules that re-import patched names, so the checks below see them.
    import ultralytics.engine.trainer  # noqa: F401
    import ultralytics.utils.plotting  # noqa: F401

    return mod


def _resolve(tp):
    import importlib

    owner = importlib.import_module(tp.module)
    *path, last = tp.attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    return getattr(owner, last)


def _loaded_ultralytics_modules():
    return [m for n, m in list(sys.modules.items()) if m is not None and (n == "ultralytics" or n.startswith("ultralytics."))]


def test_touchpoints_cover_the_known_network_functions():
    names = {(tp.module.rsplit(".", 1)[-1], tp.attr) for tp in offline.TOUCHPOINTS}
    for must in [
        ("utils", "is_online"),
        ("checks", "check_font"),
        ("checks", "check_requirements"),
        ("checks", "check_pip_update_available"),
        ("checks", "check_amp"),
        ("downloads", "safe_download"),
        ("downloads", "attempt_download_asset"),
        ("downloads", "get_github_assets"),
        ("events", "events.enabled"),
        ("utils", "sync"),
    ]:
        assert must in names, must


def test_every_touchpoint_is_patched(ul):
    from ultralytics.utils import SETTINGS

    originals = []
    for tp in offline.TOUCHPOINTS:
        if tp.kind == "setting":
            assert SETTINGS[tp.attr] == tp.value, tp
            continue
        current = _resolve(tp)
        if tp.kind == "value":
            assert current == tp.value, tp
            continue
        assert tp.kind == "function", tp
        original = getattr(current, offline.ORIGINAL_ATTR, None)
        assert original is not None, f"{tp.module}.{tp.attr} is not replaced"
        assert original is not current
        assert original.__module__.startswith("ultralytics"), (tp, original.__module__)
        assert original.__name__ == tp.attr
        assert current.__module__ == offline.__name__
        originals.append((tp, original, current))
    # No loaded Ultralytics module still holds an original (e.g. via `from checks import check_font`).
    for mod in _loaded_ultralytics_modules():
        for attr, val in vars(mod).items():
            for tp, original, _ in originals:
                assert val is not original, f"{mod.__name__}.{attr} is still the original {tp.attr}"
    # The re-imports that matter on the train / plot path point at the replacements.
    import ultralytics.utils as uu
    from ultralytics.engine import trainer
    from ultralytics.utils import checks, downloads, plotting

    assert trainer.check_amp is checks.check_amp
    assert plotting.check_font is checks.check_font
    assert downloads.is_online is uu.is_online
    assert ul.download is downloads.download
    assert uu.ONLINE is False and checks.ONLINE is False and checks.AUTOINSTALL is False


def test_configure_offline_is_idempotent(ul):
    before = {(tp.module, tp.attr): _resolve(tp) for tp in offline.TOUCHPOINTS if tp.kind == "function"}
    offline.configure_offline()
    offline.configure_offline()
    for key, fn in before.items():
        tp = next(t for t in offline.TOUCHPOINTS if (t.module, t.attr) == key)
        now = _resolve(tp)
        assert now is fn, key  # not wrapped a second time
        assert getattr(getattr(now, offline.ORIGINAL_ATTR), offline.ORIGINAL_ATTR, None) is None
    assert os.environ["YOLO_OFFLINE"] == "1"


def test_download_functions_refuse_with_a_clear_error(ul, tmp_path):
    from ultralytics.utils import checks, downloads

    url = "https://example.com/weights/model.pt"
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"czii_kaggle runs offline: refusing to download https://example.com"):
        downloads.safe_download(url, file=tmp_path / "model.pt")
    with pytest.raises(offline.OfflineError, match=r"releases/download/.*/yolo11n\.pt; pass a local weights file"):
        downloads.attempt_download_asset("yolo11n.pt")
    with pytest.raises(offline.OfflineError, match="not a local file"):
        downloads.attempt_download_asset("no_such_model_czii.pt")
    with pytest.raises(offline.OfflineError, match="api.github.com"):
        downloads.get_github_assets()
    with pytest.raises(offline.OfflineError):
        downloads.download([url], dir=tmp_path / "never_made")
    assert not (tmp_path / "never_made").exists()
    with pytest.raises(offline.OfflineError):
        checks.check_file("https://example.com/data.yaml")
    assert time.perf_counter() - t0 < 5.0  # no network time-outs were waited for
    assert not (tmp_path / "model.pt").exists()


def test_local_files_still_resolve(ul, tmp_path):
    from ultralytics.utils import downloads

    weights = tmp_path / "mine.pt"
    weights.write_bytes(b"0" * 10)
    assert downloads.attempt_download_asset(str(weights)) == str(weights)
    note = tmp_path / "note.txt"
    note.write_text("local")
    assert Path(downloads.safe_download(str(note))) == note
    # An already-downloaded file is served from disk, not fetched again.
    assert Path(downloads.safe_download("https://example.com/x/note.txt", dir=tmp_path)) == note


def test_checks_are_offline(ul, monkeypatch):
    from ultralytics.utils import checks, downloads

    assert ul.utils.is_online() is False
    assert checks.check_pip_update_available() is False
    assert checks.check_latest_pypi_version() is None
    assert downloads.is_url("https://example.com/a.pt") is True
    assert downloads.is_url("https://example.com/a.pt", check=True) is False

    def no_install(*args, **kwargs):
        raise AssertionError(f"tried to install: {args}")

    monkeypatch.setattr(checks.subprocess, "check_output", no_install)
    assert checks.check_requirements("czii-surely-not-installed-pkg>=1.0") is False
    assert checks.check_requirements("numpy") is True
    assert checks.check_requirements(["czii-surely-not-installed-pkg"], (), True) is False


def test_check_font_is_a_local_truetype_file(ul):
    from PIL import ImageFont
    from ultralytics.utils import checks

    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        path = Path(checks.check_font(name))
        assert path.is_file() and path.suffix == ".ttf", path
        assert isinstance(ImageFont.truetype(str(path), 12), ImageFont.FreeTypeFont)


def test_check_amp_never_downloads(ul):
    import torch
    from ultralytics.utils import checks

    model = torch.nn.Conv2d(3, 4, 3)  # on CPU, AMP is off before any download
    assert checks.check_amp(model) is False

    def original_that_downloads(m):  # what the CUDA path does without a local yolo26n.pt
        from ultralytics.utils.downloads import attempt_download_asset

        attempt_download_asset("yolo26n.pt")
        raise AssertionError("the download was not refused")

    tp = next(t for t in offline.TOUCHPOINTS if t.attr == "check_amp")
    assert tp.make(original_that_downloads)(model) is True


def test_set_cpu_threads_undoes_the_ultralytics_cap(ul, monkeypatch):
    import torch
    from ultralytics.utils import torch_utils

    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    before = torch.get_num_threads()
    try:
        with pytest.raises(ValueError):
            offline.set_cpu_threads(0)
        n = offline.set_cpu_threads()
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        assert n == cpus
        torch_utils.select_device("cpu", verbose=False)  # would reset to min(8, cpus - 1)
        assert torch.get_num_threads() == n
        assert offline.set_cpu_threads(1) == 1
        torch_utils.select_device("cpu", verbose=False)
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        offline.set_cpu_threads(before)


# --------------------------------------------------------------------------------------
# The end-to-end proof in a subprocess without network
# --------------------------------------------------------------------------------------

_NETWORK_EVENTS = ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
                   "socket.sendto", "urllib.Request")

_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path

    NET = []

    def _hook(event, args):
        if event in EVENTS:
            if event == "socket.connect" and isinstance(args[1], (str, bytes)):
                return  # an AF_UNIX path: local, not network
            NET.append([event, repr(args)[:300]])

    EVENTS = set(json.loads(sys.argv[2]))
    sys.addaudithook(_hook)
    work = Path(sys.argv[1])

    import cv2
    import numpy as np

    # A tiny YOLO dataset: 4 grey 64x64 images, one or two bright squares each.
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (work / "data" / split / "images").mkdir(parents=True)
        (work / "data" / split / "labels").mkdir(parents=True)
        for i in range(4):
            img = rng.integers(0, 60, (64, 64, 3), dtype=np.uint8)
            rows = []
            for k in range(1 + i % 2):
                x0, y0 = 8 + 24 * k, 10 + 6 * i
                img[y0:y0 + 16, x0:x0 + 16] = 220
                rows.append(f"{k} {(x0 + 8) / 64:.4f} {(y0 + 8) / 64:.4f} 0.25 0.25")
            cv2.imwrite(str(work / "data" / split / "images" / f"im{i}.png"), img)
            (work / "data" / split / "labels" / f"im{i}.txt").write_text("\\n".join(rows) + "\\n")
    data = work / "data.yaml"
    from czii_kaggle.particles import NAMES  # six classes, so czii_kaggle's own loaders accept the model

    names = "".join(f"  {i}: {n}\\n" for i, n in enumerate(NAMES))
    data.write_text(f"path: {work / 'data'}\\ntrain: train/images\\nval: val/images\\nnames:\\n{names}")

    from czii_kaggle import offline

    ul = offline.import_ultralytics()
    model = ul.YOLO("yolo11n.yaml")
    model.train(data=str(data), epochs=1, imgsz=64, batch=2, workers=0, device="cpu", plots=True, val=True,
                project=str(work / "runs"), name="t", exist_ok=True, seed=0, verbose=False)
    best = Path(model.trainer.best)
    save_dir = Path(model.trainer.save_dir)

    again = ul.YOLO(str(best))
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    results = again.predict(image, imgsz=64, device="cpu", conf=0.0, verbose=False)
    plotted = np.asarray(results[0].plot(pil=True))

    from PIL import ImageFont
    from ultralytics.utils.plotting import Annotator

    ann = Annotator(image.copy(), pil=True)
    ann.box_label([4, 4, 40, 40], "a 0.91", color=(0, 255, 0))

    # ONNX export (onnx / onnxslim requirement checks) and ONNX Runtime inference, offline too
    from czii_kaggle.detect import export_onnx, load_model

    onnx_path = export_onnx(best, imgsz=64)
    onnx_results = load_model(onnx_path).predict(image, imgsz=64, device="cpu", conf=0.0, verbose=False)
    top = [sorted(r[0].boxes.conf.tolist(), reverse=True)[:5] for r in (results, onnx_results)]

    t0 = time.perf_counter()
    try:
        ul.YOLO("yolo11n.pt")
        error = None
    except RuntimeError as e:
        error = str(e)
    error_s = time.perf_counter() - t0

    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR
    import torch

    print(json.dumps({
        "net": NET,
        "best": str(best),
        "plots": sorted(p.name for p in save_dir.iterdir()),
        "plotted_shape": list(plotted.shape),
        "n_boxes": len(results[0].boxes),
        "onnx": str(onnx_path),
        "top_conf": top,
        "font_is_truetype": isinstance(ann.font, ImageFont.FreeTypeFont),
        "font_path": str(getattr(ann.font, "path", None)),
        "error": error,
        "error_s": error_s,
        "config_dir": str(USER_CONFIG_DIR),
        "settings": dict(SETTINGS),
        "torch_threads": torch.get_num_threads(),
    }))
    sys.exit(3 if NET else 0)
    """
)


def _unshare_prefix() -> tuple[list[str] | None, str]:
    """The command prefix for an empty network namespace, or None and why not."""
    import shutil

    exe = shutil.which("unshare")
    if exe is None:
        return None, "the unshare command is not installed"
    for flags in (["-n"], ["-rn"]):  # as root; else as an unprivileged user namespace
        probe = subprocess.run([exe, *flags, "true"], capture_output=True, text=True)
        if probe.returncode == 0:
            return [exe, *flags], ""
    return None, f"unshare -n / -rn is not permitted here: {probe.stderr.strip()[:200]}"


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    """Run the end-to-end script once; returns (summary dict, namespaced?, why not, home, tmpdir)."""
    root = tmp_path_factory.mktemp("offline_run")
    home, tmpdir, work = root / "home", root / "tmp", root / "work"
    for d in (home, tmpdir, work):
        d.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("YOLO_", "ULTRALYTICS_", "XDG_", "PYTEST_")) and k != "OMP_NUM_THREADS"}
    env.update(HOME=str(home), TMPDIR=str(tmpdir), MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")
    prefix, why = _unshare_prefix()
    cmd = [*(prefix or []), sys.executable, "-c", _SCRIPT, str(work), json.dumps(_NETWORK_EVENTS)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    summary = None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if lines:
        summary = json.loads(lines[-1])
    return {"proc": proc, "summary": summary, "namespaced": prefix is not None, "why": why,
            "home": home, "tmpdir": tmpdir, "seconds": seconds}


@pytest.mark.slow
def test_offline_run_succeeds_without_any_network_event(offline_run):
    proc, s = offline_run["proc"], offline_run["summary"]
    assert s is not None and proc.returncode == 0, (
        f"rc={proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    )
    assert s["net"] == []
    # Trained, saved, reloaded, predicted, plotted.
    assert Path(s["best"]).is_file()
    assert "results.csv" in s["plots"]
    assert any(name.endswith((".png", ".jpg")) for name in s["plots"]), s["plots"]
    assert s["plotted_shape"] == [64, 64, 3]
    # Exported to ONNX and predicted with ONNX Runtime, as the torch model did.
    assert Path(s["onnx"]).is_file() and s["n_boxes"] > 0
    torch_top, onnx_top = s["top_conf"]
    assert len(onnx_top) == len(torch_top) > 0
    assert max(abs(a - b) for a, b in zip(onnx_top, torch_top)) < 1e-3
    assert s["font_is_truetype"] and Path(s["font_path"]).is_file()
    # The weight name that would download fails at once with the offline error.
    assert s["error"] is not None and "czii_kaggle runs offline: refusing to download" in s["error"]
    assert "yolo11n.pt" in s["error"] and "pass a local weights file" in s["error"]
    assert s["error_s"] < 5.0


@pytest.mark.slow
def test_offline_run_writes_nothing_to_home(offline_run):
    s = offline_run["summary"]
    assert s is not None, offline_run["proc"].stderr[-4000:]
    home, tmpdir = offline_run["home"], offline_run["tmpdir"]
    ultra = [p for p in home.rglob("*")
             if "ultralytics" in p.name.lower() or p.name in {"settings.json", "Arial.ttf", "Arial.Unicode.ttf"}]
    assert ultra == [], ultra
    assert not (home / ".config" / "Ultralytics").exists()
    # Ultralytics made its settings file in the default cache folder (TMPDIR here); analytics and
    # remote loggers are off in memory, and the file still holds Ultralytics' defaults (not rewritten).
    config_dir = Path(s["config_dir"])
    assert config_dir.is_relative_to(tmpdir / "czii_kaggle" / "ultralytics"), config_dir
    on_disk = json.loads((config_dir / "settings.json").read_text())
    assert on_disk["sync"] is True and on_disk["mlflow"] is True
    for key in offline.OFFLINE_SETTINGS:
        assert s["settings"][key] is False, key


@pytest.mark.slow
def test_offline_run_inside_an_empty_network_namespace(offline_run):
    if not offline_run["namespaced"]:
        pytest.skip(f"no network namespace ({offline_run['why']}); the audit-hook test still ran")
    proc = offline_run["proc"]
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert offline_run["seconds"] < 300
