"""Switch off every network touchpoint of Ultralytics, in one place.

A Kaggle kernel for this competition runs with the internet OFF, and so does CI.
Ultralytics (checked against 8.4.190) reaches for the network in many places; this
module is the only one that imports ``ultralytics``, and it does so through
:func:`import_ultralytics`, which first calls :func:`configure_offline`.

Before the import, :func:`configure_offline` sets the environment:

``YOLO_OFFLINE=1``
    ``ultralytics.utils.is_online()`` returns False without its DNS look-ups, so the
    import-time ``ONLINE`` constant is False (Sentry set-up and analytics stay off).
``YOLO_AUTOINSTALL=0``
    ``check_requirements`` never runs ``pip install`` / ``uv pip install``.
``YOLO_CONFIG_DIR``
    settings.json and fonts go to a writable cache folder, never ``~/.config/Ultralytics``
    (a read-only home on Kaggle is fine).

``YOLO_VERBOSE`` is left as the user set it. After the import every entry of
:data:`TOUCHPOINTS` is applied: functions are replaced in the module that defines them
*and* in every loaded ``ultralytics.*`` module that did ``from ... import name``;
constants, the analytics switch and the settings keys are set (in memory, with
:data:`QUIET_SETTINGS`, so that no settings file is rewritten). A replaced function keeps
its original in the attribute named by :data:`ORIGINAL_ATTR`.

Not covered (this package never does it): a URL given as a *predict source*
(``model.predict("https://...")``) is still fetched by Ultralytics' loaders;
``check_file`` URLs go through the patched ``safe_download`` and are refused.
"""
from __future__ import annotations

import inspect
import os
import sys
import tempfile
import types
import warnings
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any, Callable

#: Attribute of a replacement function that holds the Ultralytics function it replaced.
ORIGINAL_ATTR = "__czii_offline_original__"

#: Environment set before Ultralytics is imported (always, overriding the user's value).
OFFLINE_ENV = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0"}

#: Settings keys set to False: analytics / Sentry (``sync``) and the logger
#: integrations that may talk to a remote server when their package is installed.
#: (Ultralytics 8.4 has no ``hub`` setting; its successor, the Platform callbacks,
#: is switched off in :data:`TOUCHPOINTS`.)
OFFLINE_SETTINGS = ("sync", "clearml", "comet", "dvc", "mlflow", "wandb")
#: Settings Ultralytics would otherwise write back to settings.json on its own (not network):
#: ``openvino_msg``, switched off after its one-time tip at the first export. Set in memory
#: so that no settings file, a user's own included, is ever rewritten with the values above.
QUIET_SETTINGS = {"openvino_msg": False}

_ASSETS_REPO = "ultralytics/assets"
_CONFIG_SUBDIR = Path("czii_kaggle") / "ultralytics"


class OfflineError(RuntimeError):
    """Ultralytics tried to reach the network while :mod:`czii_kaggle.offline` is active.

    Parameters
    ----------
    url : str
        What would have been fetched (a URL, or a release asset name).
    action : str
        The refused verb, ``"download"`` or ``"upload"``.
    hint : str
        What to do instead.
    """

    def __init__(self, url: str, action: str = "download", hint: str = "pass a local weights file"):
        self.url = str(url)
        super().__init__(f"czii_kaggle runs offline: refusing to {action} {self.url}; {hint}")


# --------------------------------------------------------------------------------------
# Replacements: each factory takes the Ultralytics original and returns the offline one.
# --------------------------------------------------------------------------------------


def _make_is_online(original: Callable) -> Callable:
    def is_online() -> bool:
        """Offline: always False, without any DNS look-up."""
        return False

    return is_online


def _make_false(original: Callable) -> Callable:
    def always_false(*args: Any, **kwargs: Any) -> bool:
        """Offline: False, without asking PyPI."""
        return False

    return always_false


def _make_no_pypi(original: Callable) -> Callable:
    def check_latest_pypi_version(package_name: str = "ultralytics") -> None:
        """Offline: the latest PyPI version is unknown (None), without a request."""
        return None

    return check_latest_pypi_version


def _local_font_path(font: str, config_dir: Path) -> Path:
    """A font file already on the machine for the font name Ultralytics asks for.

    Order: an existing path, ``config_dir / name`` (where Ultralytics caches fonts),
    a matplotlib-known font whose file name contains ``name``, else matplotlib's own
    ``DejaVuSans.ttf`` (always installed with matplotlib, covers Latin, Greek, Cyrillic).
    """
    import matplotlib
    from matplotlib import font_manager

    name = Path(font).name
    if Path(font).is_file():
        return Path(font)
    cached = config_dir / name
    if cached.is_file():
        return cached
    for entry in font_manager.fontManager.ttflist:
        if name in entry.fname and os.path.exists(entry.fname):
            return Path(entry.fname)
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def _make_check_font(original: Callable) -> Callable:
    def check_font(font: str = "Arial.ttf") -> Path:
        """Offline: a local font file (matplotlib's DejaVuSans.ttf if nothing closer), never a download."""
        from ultralytics.utils import USER_CONFIG_DIR

        return _local_font_path(font, Path(USER_CONFIG_DIR))

    return check_font


def _make_check_requirements(original: Callable) -> Callable:
    signature = inspect.signature(original)

    def check_requirements(*args: Any, **kwargs: Any) -> bool:
        """Offline: Ultralytics' check with ``install=False``; a missing package is reported, never installed."""
        bound = signature.bind(*args, **kwargs)
        bound.arguments["install"] = False
        return original(*bound.args, **bound.kwargs)

    return check_requirements


def _make_check_amp(original: Callable) -> Callable:
    def check_amp(model: Any) -> bool:
        """Offline AMP check: Ultralytics' own check, minus its download.

        Ultralytics returns False on CPU/MPS and on GPUs known to break AMP before it
        downloads ``yolo26n.pt`` to compare FP32 and FP16 outputs. Here the download is
        refused (:class:`OfflineError`); the comparison is then skipped and AMP stays on
        (True). Pass ``amp=False`` to training to turn AMP off. When ``yolo26n.pt`` is
        already in the weights folder the full check runs, offline.
        """
        try:
            return original(model)
        except OfflineError:
            from ultralytics.utils import LOGGER

            LOGGER.info("AMP: checks skipped offline (no local yolo26n.pt); AMP stays on, pass amp=False to disable")
            return True

    return check_amp


def _make_resolve_platform_uri(original: Callable) -> Callable:
    def resolve_platform_uri(uri: str, hard: bool = True) -> None:
        """Offline: refuse to resolve an ``ul://`` Ultralytics Platform URI."""
        raise OfflineError(uri)

    return resolve_platform_uri


def _make_is_url(original: Callable) -> Callable:
    def is_url(url: Any, check: bool = False) -> bool:
        """Offline: the URL syntax check only; ``check=True`` (is it reachable?) answers False without a request."""
        return False if check else original(url, check=False)

    return is_url


def _make_safe_download(original: Callable) -> Callable:
    def safe_download(url: Any, file: Any = None, dir: Any = None, *args: Any, **kwargs: Any) -> Path:
        """Offline: only a local archive or an already-downloaded file is handled (e.g. unzipped); a fetch raises."""
        from ultralytics.utils import url2file

        text = str(url)
        local = "://" not in text and Path(text).is_file()
        cached = (Path(dir or ".") / (file or url2file(text))).is_file()
        if local or cached:
            return original(url, file, dir, *args, **kwargs)
        raise OfflineError(text)

    return safe_download


def _make_download(original: Callable) -> Callable:
    def download(url: Any, *args: Any, **kwargs: Any) -> None:
        """Offline: refuse any remote URL before a folder is made; local archives go to the original."""
        for u in [url] if isinstance(url, (str, Path)) else url:
            if "://" in str(u):
                raise OfflineError(str(u))
        return original(url, *args, **kwargs)

    return download


def _make_attempt_download_asset(original: Callable) -> Callable:
    def attempt_download_asset(file: Any, repo: str = _ASSETS_REPO, release: str = "v8.4.0", **kwargs: Any) -> str:
        """Offline: resolve a weights file that is already local, else raise naming what would be downloaded."""
        from ultralytics.utils import SETTINGS, checks, url2file
        from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES

        text = str(file).strip().replace("'", "")
        local = Path(checks.check_yolov5u_filename(text, verbose=False))
        name = local.name
        is_url = text.lower().startswith(("http:/", "https:/"))
        found = (
            local.exists()
            or (Path(SETTINGS["weights_dir"]) / local).exists()
            or (is_url and Path(url2file(name)).is_file())
        )
        if found:
            return original(file, repo, release, **kwargs)
        if is_url:
            raise OfflineError(text)
        if repo == _ASSETS_REPO and name in GITHUB_ASSETS_NAMES:
            raise OfflineError(f"https://github.com/{repo}/releases/download/{release}/{name}")
        raise OfflineError(f"{name!r} (not a local file) from https://github.com/{repo}/releases")

    return attempt_download_asset


def _make_get_github_assets(original: Callable) -> Callable:
    def get_github_assets(repo: str = _ASSETS_REPO, version: str = "latest", retry: bool = False) -> tuple:
        """Offline: refuse the GitHub release look-up."""
        raise OfflineError(f"https://api.github.com/repos/{repo}/releases/{version}")

    return get_github_assets


def _make_gdrive_info(original: Callable) -> Callable:
    def get_google_drive_file_info(link: str) -> tuple:
        """Offline: refuse the Google Drive look-up."""
        raise OfflineError(link)

    return get_google_drive_file_info


def _make_no_post(original: Callable) -> Callable:
    def _post(url: str, data: dict, timeout: float = 5.0) -> None:
        """Offline: analytics events are dropped, never posted."""
        return None

    return _post


def _make_no_upload(original: Callable) -> Callable:
    def safe_upload(file: Any, url: str, *args: Any, **kwargs: Any) -> bool:
        """Offline: refuse the upload."""
        raise OfflineError(url, action="upload", hint="uploads are off")

    return safe_upload


# --------------------------------------------------------------------------------------
# The documented list of touchpoints.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Touchpoint:
    """One place where Ultralytics would reach the network, and how it is switched off.

    Attributes
    ----------
    module : str
        Dotted name of the module that defines the attribute.
    attr : str
        Attribute name; a dotted path reaches into an object (``"events.enabled"``).
        For ``kind == "setting"`` the key of ``ultralytics.utils.SETTINGS``.
    kind : str
        ``"function"``: replaced by ``make(original)`` where defined and wherever imported;
        ``"value"``: set to ``value``; ``"setting"``: ``SETTINGS[attr] = value`` in memory
        (the settings file is not rewritten).
    network : str
        What Ultralytics does there.
    make : callable or None
        Factory ``original -> replacement`` for ``kind == "function"``.
    value : object
        The value for ``kind`` ``"value"`` and ``"setting"``.
    """

    module: str
    attr: str
    kind: str
    network: str
    make: Callable[[Callable], Callable] | None = None
    value: Any = None


_U, _C, _D = "ultralytics.utils", "ultralytics.utils.checks", "ultralytics.utils.downloads"

#: Every network touchpoint found in Ultralytics 8.4.190, with how it is switched off.
TOUCHPOINTS: tuple[Touchpoint, ...] = (
    Touchpoint(_U, "is_online", "function", "DNS look-ups of one.one.one.one / dns.google", _make_is_online),
    Touchpoint(_U, "ONLINE", "value", "import-time connectivity flag (gates Sentry, analytics, AutoUpdate)", value=False),
    Touchpoint(_C, "ONLINE", "value", "copy of ONLINE gating pip AutoUpdate and the PyPI check", value=False),
    Touchpoint(_U, "AUTOINSTALL", "value", "pip / uv auto-install of missing requirements", value=False),
    Touchpoint(_C, "AUTOINSTALL", "value", "copy of AUTOINSTALL read by check_requirements", value=False),
    Touchpoint(_C, "check_requirements", "function", "pip install of missing packages", _make_check_requirements),
    Touchpoint(_C, "check_pip_update_available", "function", "PyPI version check in YOLO.train()", _make_false),
    Touchpoint(_C, "check_latest_pypi_version", "function", "GET pypi.org/pypi/ultralytics/json", _make_no_pypi),
    Touchpoint(_C, "check_font", "function", "Arial.ttf download for plots / PIL labels", _make_check_font),
    Touchpoint(_C, "check_amp", "function", "yolo26n.pt download for the CUDA AMP check", _make_check_amp),
    Touchpoint(_C, "resolve_platform_uri", "function", "ul:// URI resolution via the Platform API",
               _make_resolve_platform_uri),
    Touchpoint(_D, "is_url", "function", "HEAD request when check=True (font availability)", _make_is_url),
    Touchpoint(_D, "safe_download", "function", "every file download (weights, datasets, fonts)",
               _make_safe_download),
    Touchpoint(_D, "download", "function", "multi-URL downloads (datasets, assets)", _make_download),
    Touchpoint(_D, "attempt_download_asset", "function", "weights by name, e.g. yolo11n.pt, from GitHub releases",
               _make_attempt_download_asset),
    Touchpoint(_D, "get_github_assets", "function", "GitHub API release look-up", _make_get_github_assets),
    Touchpoint(_D, "get_google_drive_file_info", "function", "Google Drive link look-up", _make_gdrive_info),
    Touchpoint("ultralytics.utils.uploads", "safe_upload", "function", "uploads to Platform", _make_no_upload),
    Touchpoint("ultralytics.utils.events", "_post", "function", "POST of analytics to google-analytics.com",
               _make_no_post),
    Touchpoint("ultralytics.utils.events", "ONLINE", "value", "copy of ONLINE gating analytics", value=False),
    Touchpoint("ultralytics.utils.events", "events.enabled", "value", "analytics events on train/val/predict",
               value=False),
    Touchpoint("ultralytics.utils.callbacks.platform", "callbacks", "value",
               "Platform (ex-HUB) training callbacks: metrics, console, model uploads",
               value=types.MappingProxyType({})),
    *(Touchpoint(_U, key, "setting", f"settings '{key}': analytics/Sentry or a remote logger", value=False)
      for key in OFFLINE_SETTINGS),
)


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def _cpu_count() -> int:
    """CPUs this process may run on (affinity-aware where the OS tells)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_config_dir() -> Path:
    """Where Ultralytics' settings and fonts go unless told otherwise.

    ``$XDG_CACHE_HOME/czii_kaggle/ultralytics`` when ``XDG_CACHE_HOME`` is set, else
    ``{tempfile.gettempdir()}/czii_kaggle/ultralytics``: never the home folder, which may
    be read-only on Kaggle. Ultralytics adds its own ``Ultralytics/`` sub-folder.
    """
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path(tempfile.gettempdir())) / _CONFIG_SUBDIR


def _writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="czii_kaggle-ultralytics-"))


def _resolve(module: types.ModuleType, dotted: str) -> tuple[Any, str]:
    """The object holding the last part of ``dotted`` and that part's name."""
    *path, last = dotted.split(".")
    owner: Any = module
    for part in path:
        owner = getattr(owner, part)
    return owner, last


def _apply_touchpoints() -> None:
    """Apply :data:`TOUCHPOINTS` (idempotent) and patch every loaded re-import of a replaced function."""
    from ultralytics.utils import SETTINGS

    for key, value in QUIET_SETTINGS.items():
        dict.__setitem__(SETTINGS, key, value)
    replacements: dict[int, Callable] = {}
    for tp in TOUCHPOINTS:
        if tp.kind == "setting":
            # In memory only (dict.__setitem__ skips the JSON save): no settings file is
            # rewritten, not even a user's own when Ultralytics was imported first.
            dict.__setitem__(SETTINGS, tp.attr, tp.value)
            continue
        owner, name = _resolve(import_module(tp.module), tp.attr)
        if tp.kind == "value":
            setattr(owner, name, tp.value)
            continue
        current = getattr(owner, name)
        original = getattr(current, ORIGINAL_ATTR, None)
        if original is None:
            original, current = current, tp.make(current)
            current.__name__ = current.__qualname__ = name
            current.__module__ = __name__
            setattr(current, ORIGINAL_ATTR, original)
            setattr(owner, name, current)
        replacements[id(original)] = current
    # Modules that did `from ultralytics.utils.checks import check_font` hold the original.
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not (mod_name == "ultralytics" or mod_name.startswith("ultralytics.")):
            continue
        for attr, val in list(vars(mod).items()):
            new = replacements.get(id(val))
            if new is not None and val is not new:
                setattr(mod, attr, new)


def set_cpu_threads(n: int | None = None) -> int:
    """Let torch use ``n`` CPU threads, undoing Ultralytics' caps.

    ``import ultralytics`` sets ``OMP_NUM_THREADS=1`` when unset (torch then starts with
    one thread), and ``select_device`` calls ``torch.set_num_threads(NUM_THREADS)`` with
    ``NUM_THREADS = min(8, cpu_count - 1)`` on every CPU train / predict. This sets
    ``torch.set_num_threads(n)``, ``OMP_NUM_THREADS`` (for child processes) and, when
    Ultralytics is loaded, the ``NUM_THREADS`` that ``select_device`` applies.

    Parameters
    ----------
    n : int, optional
        Thread count, >= 1; default: the CPUs this process may use.

    Returns
    -------
    int
        The thread count set.
    """
    import torch

    n = _cpu_count() if n is None else int(n)
    if n < 1:
        raise ValueError(f"set_cpu_threads needs n >= 1, not {n}")
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    torch_utils = sys.modules.get("ultralytics.utils.torch_utils")
    if torch_utils is not None:
        torch_utils.NUM_THREADS = n
    return n


def configure_offline(config_dir: str | Path | None = None) -> None:
    """Switch off every network touchpoint of Ultralytics; safe to call any number of times.

    Sets :data:`OFFLINE_ENV` and ``YOLO_CONFIG_DIR``, imports Ultralytics, then applies
    :data:`TOUCHPOINTS`. The first call that patches also undoes Ultralytics' torch
    thread cap (:func:`set_cpu_threads`, honouring an ``OMP_NUM_THREADS`` set beforehand).

    Parameters
    ----------
    config_dir : str or Path, optional
        Folder for Ultralytics' settings.json and fonts (``Ultralytics/`` is added inside).
        Default: an existing ``YOLO_CONFIG_DIR``, else :func:`default_config_dir`. It only
        takes effect if Ultralytics was not imported yet.
    """
    preloaded = "ultralytics.utils" in sys.modules
    if config_dir is not None or not os.environ.get("YOLO_CONFIG_DIR"):
        folder = _writable_dir(Path(config_dir) if config_dir is not None else default_config_dir())
        os.environ["YOLO_CONFIG_DIR"] = str(folder)
    os.environ.update(OFFLINE_ENV)
    omp_before = os.environ.get("OMP_NUM_THREADS")

    import ultralytics  # noqa: F401  (the one place the package imports it)
    from ultralytics.utils import checks

    first = ORIGINAL_ATTR not in vars(checks.check_font)
    if first and preloaded:
        warnings.warn(
            "ultralytics was imported before czii_kaggle.offline.configure_offline(): its import-time "
            f"connectivity check may have run and its settings live in {checks.USER_CONFIG_DIR}",
            RuntimeWarning,
            stacklevel=2,
        )
    _apply_touchpoints()
    if first:
        if preloaded or omp_before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
            set_cpu_threads()
        else:
            set_cpu_threads(int(omp_before))


def import_ultralytics() -> types.ModuleType:
    """The ``ultralytics`` module, with every network touchpoint switched off.

    The rest of the package imports Ultralytics only through this function, e.g.
    ``YOLO = offline.import_ultralytics().YOLO``.
    """
    configure_offline()
    import ultralytics

    return ultralytics
