#!/usr/bin/env bash
# Build the offline install archive of czii_kaggle for Kaggle (internet OFF).
#
# Writes, under --out (default: wheels/ beside this script):
#   *.whl                       czii_kaggle (with its shipped weights) and every run-time dependency
#                               that Kaggle's image may lack, as binary wheels for every target
#                               Python (default CPython 3.11, 3.12 and 3.13: one archive for all)
#   MANIFEST.tsv                file, distribution, version, python (the target Pythons whose
#                               resolution chose the wheel), sha256 of every wheel
#   install.py                  the installer the notebook's install cell runs (czii_kaggle/kaggle_install.py)
#   czii_kaggle_offline.tar.gz  czii_kaggle_offline/{*.whl, MANIFEST.tsv, install.py}: the one file to upload
# Install from it with:  python install.py   (or pip install --no-index --find-links DIR "czii_kaggle[detect]")
#
# How the wheel list is found: for each target Python, pip resolves czii_kaggle[detect] + the
# run-time pins of requirements.txt (ultralytics, zarr, numcodecs, asciitree) for the TARGET
# (pip install --dry-run --report, binary wheels only, --python-version/--platform). Everything that
# Kaggle's preinstalled packages (KAGGLE_PREINSTALLED below) pull in, by the dependency graph
# of that same resolution, is left out: torch and its nvidia-*/triton/sympy..., numpy,
# pandas, matplotlib and theirs. The rest is bundled, pinned to the resolved versions.
# A dependency published only as a source archive is built into a (pure-Python) wheel.
#
# Idempotent: wheels already under --out (same file, same sha256) are reused; wheels of an
# earlier build that this bundle no longer needs are removed when they would serve one of this
# build's target Pythons (wheels only for other Pythons are left alone); archive and manifest
# are rewritten. A package without a wheel for one of the target Pythons stops the build.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Kaggle's image has these (and whatever they depend on); --with-torch drops torch/torchvision.
KAGGLE_PREINSTALLED="torch torchvision numpy scipy pandas matplotlib opencv-python polars pyyaml tqdm pillow requests psutil"
# Run-time requirements taken from requirements.txt (the one place their pins live).
PINNED_FROM_REQUIREMENTS="ultralytics onnxruntime zarr numcodecs asciitree"
ARCHIVE_NAME=czii_kaggle_offline
REQUIRED_IN_BUNDLE="czii-kaggle ultralytics ultralytics-thop onnxruntime zarr numcodecs asciitree"

usage() {
  cat <<EOF
usage: $0 [--python-version V ...] [--platform TAG ...] [--with-torch] [--require REQ ...] [--out DIR]

  --python-version V   target CPython version, repeatable (default: 3.11 3.12 3.13; Kaggle's
                       image runs 3.12 since December 2025)
  --platform TAG       target platform tag, repeatable (default manylinux_2_28_x86_64); a
                       manylinux tag also accepts every older manylinux tag of its architecture
  --with-torch         also bundle torch/torchvision (pins from requirements.txt) and what only
                       they need (nvidia-*, triton, ...), for offline machines without them (GBs)
  --require REQ        also bundle REQ and its dependencies (repeatable), e.g. 'timm==1.0.9'
  --out DIR            output folder (default: $REPO/wheels)
Environment: PYTHON (default: $REPO/.venv/bin/python) runs pip.
EOF
}

PY_VERSIONS=()
PLATFORMS=()
WITH_TORCH=0
EXTRA_REQS=()
OUT="$REPO/wheels"
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) PY_VERSIONS+=("${2:?--python-version needs a value}"); shift 2 ;;
    --platform) PLATFORMS+=("${2:?--platform needs a value}"); shift 2 ;;
    --with-torch) WITH_TORCH=1; shift ;;
    --require) EXTRA_REQS+=("${2:?--require needs a value}"); shift 2 ;;
    --out) OUT=${2:?--out needs a value}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build_wheels: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
[ ${#PLATFORMS[@]} -gt 0 ] || PLATFORMS=(manylinux_2_28_x86_64)
[ ${#PY_VERSIONS[@]} -gt 0 ] || PY_VERSIONS=(3.11 3.12 3.13)
for v in "${PY_VERSIONS[@]}"; do
  [[ $v =~ ^3\.[0-9]+$ ]] || { echo "build_wheels: --python-version takes MAJOR.MINOR (3.12), not '$v'" >&2; exit 2; }
done

say() { echo "[build_wheels] $*"; }
die() { echo "[build_wheels] ERROR: $*" >&2; exit 1; }

PY=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$PY" ] || command -v "$PY" >/dev/null || die "no Python at '$PY' (set PYTHON, or run ./setup.sh first)"
PIP=("$PY" -m pip --disable-pip-version-check)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/czii_build_wheels.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# Pip's own noise from unreachable local indexes of some machines: hidden from error excerpts.
pip_excerpt() { grep -v -e 'is ignored: it is neither a file nor a directory' "$1" | tail -n "${2:-15}" >&2 || true; }

# ---------------------------------------------------------------- python helper
cat >"$WORK/helper.py" <<'PYEOF'
"""Helpers of build_wheels.sh: platform tags, bundle selection, wheel checks, manifest."""
import hashlib
import json
import re
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename
except ImportError:  # pip always carries its own copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename

LEGACY = {"manylinux1": 5, "manylinux2010": 12, "manylinux2014": 17}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def expand_platforms(tags):
    """Every manylinux tag that a given manylinux tag's glibc also runs (pip does not do this)."""
    out = []
    for tag in tags:
        m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", tag) or re.fullmatch(r"(manylinux1|manylinux2010|manylinux2014)_(\w+)", tag)
        if not m:
            out.append(tag)
            continue
        glibc = LEGACY.get(m.group(1)) or int(m.group(1))
        arch = m.group(2)
        for minor in range(glibc, 4, -1):
            out.append(f"manylinux_2_{minor}_{arch}")
            out += [f"{legacy}_{arch}" for legacy, v in LEGACY.items() if v == minor and arch in ("x86_64", "i686")]
    print("\n".join(dict.fromkeys(out)))


def req_name(req):
    print(canonicalize_name(Requirement(req).name))


def select(report_path, roots_csv, py_version):
    """TSV of the packages to bundle: all resolved ones minus the closure of ``roots``.

    The closure follows each resolved package's ``Requires-Dist`` (markers evaluated in the
    environment pip resolved with, for the target Python ``py_version``, extras followed) to
    packages of the same resolution.
    """
    report = json.loads(Path(report_path).read_text())
    env = {**report["environment"], "python_version": py_version, "python_full_version": f"{py_version}.0"}
    items = {canonicalize_name(i["metadata"]["name"]): i for i in report["install"]}

    def deps(name, extras):
        for text in items[name]["metadata"].get("requires_dist", []):
            req = Requirement(text)
            dep = canonicalize_name(req.name)
            if dep not in items:
                continue
            if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in ("", *extras)):
                yield dep, set(req.extras)

    closure = {}
    todo = [(canonicalize_name(r), set()) for r in roots_csv.split(",") if r]
    while todo:
        name, extras = todo.pop()
        if name not in items or (name in closure and extras <= closure[name]):
            continue
        closure[name] = closure.get(name, set()) | extras
        todo.extend(deps(name, closure[name]))
    kept = sorted(set(items) - set(closure))
    print(f"resolved {len(items)} packages; left out (Kaggle has them or their dependants): "
          f"{', '.join(sorted(closure)) or 'none'}", file=sys.stderr)
    for name in kept:
        info = items[name]["download_info"]
        url = info["url"]
        digest = info.get("archive_info", {}).get("hashes", {}).get("sha256", "")
        print("\t".join([name, items[name]["metadata"]["version"], url.rsplit("/", 1)[-1], url, digest]))


def wheel_metadata(path):
    with zipfile.ZipFile(path) as zf:
        meta = [n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
        if len(meta) != 1:
            raise SystemExit(f"{path}: not a wheel (no single *.dist-info/METADATA)")
        msg = Parser().parsestr(zf.read(meta[0]).decode("utf-8"))
    return msg["Name"], msg["Version"]


def check_czii_wheel(wheel, src_root):
    """The wheel holds the shipped weights, and every file it ships equals the source file."""
    src_root = Path(src_root)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for needed in ("czii_kaggle/models/model.pt", "czii_kaggle/models/czii_config.json"):
            if needed not in names:
                raise SystemExit(f"[build_wheels] ERROR: {wheel} lacks {needed}: check [tool.setuptools.package-data] in pyproject.toml")
        for name in sorted(n for n in names if n.startswith("czii_kaggle/")):
            src = src_root / name
            if not src.is_file() or hashlib.sha256(zf.read(name)).hexdigest() != sha256(src):
                raise SystemExit(f"[build_wheels] ERROR: {wheel}: {name} differs from its source {src}")
        size = zf.getinfo("czii_kaggle/models/model.pt").file_size
        onnx = json.loads(zf.read("czii_kaggle/models/czii_config.json")).get("onnx") or {}
        pt_sha = hashlib.sha256(zf.read("czii_kaggle/models/model.pt")).hexdigest()
        has_onnx = f"czii_kaggle/models/{onnx.get('file', 'model.onnx')}" in names
    print(f"czii_kaggle wheel holds models/model.pt ({size / 1e6:.1f} MB) and models/czii_config.json")
    if not has_onnx or onnx.get("source_sha256") != pt_sha:
        print("WARNING: no up-to-date models/model.onnx: CPU inference will run the .pt with torch "
              "(run `czii-kaggle export-onnx` before building for ONNX Runtime's faster CPU path)")
    else:
        print("czii_kaggle wheel holds models/model.onnx, exported from this model.pt (ONNX Runtime on CPU)")


def is_pure(wheel):
    """Exit 0 when the wheel runs on any platform (abi none, platform any)."""
    _, _, _, tags = parse_wheel_filename(Path(wheel).name)
    sys.exit(0 if all(t.abi == "none" and t.platform == "any" for t in tags) else 1)


def serves(wheel, py_version):
    """Whether a wheel's Python tags accept CPython ``py_version`` ("3.12"), platform aside."""
    minor = int(py_version.split(".")[1])
    _, _, _, tags = parse_wheel_filename(Path(wheel).name)
    for t in tags:
        if t.interpreter in ("py3", f"py3{minor}") and t.abi == "none":
            return True
        if t.interpreter == f"cp3{minor}" and t.abi in (f"cp3{minor}", "none", "abi3"):
            return True
        if t.abi == "abi3" and re.fullmatch(r"cp3\d+", t.interpreter) and int(t.interpreter[3:]) <= minor:
            return True
    return False


def stale(keep_list, py_versions_csv, *wheels):
    """The ``wheels`` not in the keep list that would serve one of the target Pythons."""
    keep = set(Path(keep_list).read_text().split())
    versions = py_versions_csv.split(",")
    for wheel in wheels:
        if Path(wheel).name not in keep and any(serves(wheel, v) for v in versions):
            print(wheel)


def manifest(out_path, chosen_tsv):
    """MANIFEST.tsv from lines ``path<TAB>target Pythons that chose it`` (space separated)."""
    chosen = [line.split("\t") for line in Path(chosen_tsv).read_text().splitlines() if line]
    rows = ["file\tdistribution\tversion\tpython\tsha256"]
    for wheel, pythons in sorted(chosen, key=lambda c: Path(c[0]).name.lower()):
        name, version = wheel_metadata(wheel)
        pythons = " ".join(sorted(set(pythons.split()), key=lambda v: tuple(map(int, v.split(".")))))
        rows.append(f"{Path(wheel).name}\t{name}\t{version}\t{pythons}\t{sha256(wheel)}")
    Path(out_path).write_text("\n".join(rows) + "\n")


def coverage(manifest_path, py_versions_csv):
    """Stop naming every distribution that lacks a wheel for one of the target Pythons."""
    rows = [line.split("\t") for line in Path(manifest_path).read_text().splitlines()[1:]]
    covered = {}
    for _, name, _, pythons, _ in rows:
        covered.setdefault(canonicalize_name(name), set()).update(pythons.split())
    gaps = [f"{name} (CPython {', '.join(v for v in py_versions_csv.split(',') if v not in have)})"
            for name, have in sorted(covered.items()) if not set(py_versions_csv.split(",")) <= have]
    if gaps:
        raise SystemExit(f"[build_wheels] ERROR: no wheel for every target Python: {'; '.join(gaps)}")


def pins(requirements, *names):
    """The lines of a requirements file for ``names`` (their pins live there)."""
    lines = {}
    for line in Path(requirements).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.setdefault(canonicalize_name(Requirement(line).name), line)
    missing = [n for n in names if canonicalize_name(n) not in lines]
    if missing:
        raise SystemExit(f"[build_wheels] ERROR: {requirements} has no line for {', '.join(missing)} (the pins live there)")
    print("\n".join(lines[canonicalize_name(n)] for n in names))


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"expand-platforms": lambda *a: expand_platforms(a), "req-name": req_name, "select": select,
     "check-czii-wheel": check_czii_wheel, "is-pure": is_pure, "manifest": manifest,
     "stale": stale, "coverage": coverage, "pins": pins}[command](*args)
PYEOF
helper() { "$PY" "$WORK/helper.py" "$@"; }
sha_of() { sha256sum "$1" | cut -d' ' -f1; }

mapfile -t ALL_PLATFORMS < <(helper expand-platforms "${PLATFORMS[@]}")
PLATFORM_ARGS=()
for p in "${ALL_PLATFORMS[@]}"; do PLATFORM_ARGS+=(--platform "$p"); done
say "targets: CPython ${PY_VERSIONS[*]} on ${PLATFORMS[*]} (+ older tags: ${#ALL_PLATFORMS[@]} platform tags); output: $OUT"
say "pip: $("${PIP[@]}" --version)"
# Resolving reads each candidate's metadata. Where the index serves no separate metadata file
# (PEP 658), pip downloads the whole wheel for it: torch alone is 550 MB per target Python, and
# torch is never bundled. fast-deps reads a wheel's metadata with HTTP range requests instead
# (pip falls back to the download where the server refuses ranges).
LAZY=()
if "${PIP[@]}" install --use-feature=fast-deps --help >/dev/null 2>&1; then LAZY=(--use-feature=fast-deps); fi
[ -f "$REPO/czii_kaggle/kaggle_install.py" ] || die "the archive's installer is missing: $REPO/czii_kaggle/kaggle_install.py"

# ---------------------------------------------------------------- 1. czii_kaggle's own wheel
for f in model.pt czii_config.json; do
  [ -f "$REPO/czii_kaggle/models/$f" ] ||
    die "the shipped model is missing: $REPO/czii_kaggle/models/$f (train it and copy model.pt + czii_config.json there before building the archive)"
done
say "building czii_kaggle's wheel from a clean copy of the sources (pyproject.toml, README.md, czii_kaggle/)"
SRC="$WORK/src"
mkdir -p "$SRC"
src_files=()
for f in pyproject.toml README.md LICENSE LICENSE.txt MANIFEST.in setup.cfg setup.py czii_kaggle; do
  [ -e "$REPO/$f" ] && src_files+=("$f")
done
tar -C "$REPO" --exclude=__pycache__ --exclude='*.pyc' -cf - "${src_files[@]}" | tar -C "$SRC" -xf -
rm -f "$OUT"/czii_kaggle-*.whl
SOURCE_DATE_EPOCH=946684800 "${PIP[@]}" wheel -q --no-deps -w "$WORK/czii" "$SRC" >"$WORK/czii.log" 2>&1 ||
  { pip_excerpt "$WORK/czii.log" 30; die "pip wheel of czii_kaggle failed (output above)"; }
CZII_WHEEL=$(ls "$WORK"/czii/czii_kaggle-*.whl)
helper check-czii-wheel "$CZII_WHEEL" "$SRC" | sed 's/^/[build_wheels] /'
mv "$CZII_WHEEL" "$OUT/"
CZII_WHEEL="$OUT/$(basename "$CZII_WHEEL")"
CZII_VERSION=$(basename "$CZII_WHEEL" | cut -d- -f2)

# ---------------------------------------------------------------- 2. requirements
PINS=$(helper pins "$REPO/requirements.txt" $PINNED_FROM_REQUIREMENTS) || die "see above"
mapfile -t REQS <<<"$PINS"
ROOTS=$KAGGLE_PREINSTALLED
if [ $WITH_TORCH = 1 ]; then
  PINS=$(helper pins "$REPO/requirements.txt" torch torchvision) || die "see above"
  mapfile -t -O ${#REQS[@]} REQS <<<"$PINS"
  ROOTS=$(echo " $KAGGLE_PREINSTALLED " | sed 's/ torch / /; s/ torchvision / /')
fi
for extra in "${EXTRA_REQS[@]}"; do  # --require replaces a requirement of the same name
  name=$(helper req-name "$extra")
  for i in "${!REQS[@]}"; do
    [ "$(helper req-name "${REQS[$i]}")" != "$name" ] || unset 'REQS[i]'
  done
  REQS+=("$extra")
done
REQS=("czii_kaggle[detect]==$CZII_VERSION" "${REQS[@]}")

# A requirement with no wheel for the target: build its wheel from the source archive when the
# project publishes only one (pure Python), else stop naming it.
build_from_sdist() {
  local req=$1 name=$2
  if "${PIP[@]}" download -q --no-deps --only-binary=:all: -d "$WORK/probe" "$req" >"$WORK/probe.log" 2>&1; then
    die "cannot get a wheel of $name for CPython $PY_VERSION on ${PLATFORMS[*]} ('$req'): wheels of it exist for other targets only"
  fi
  say "$name publishes no wheel ('$req'): building one from its source archive"
  rm -rf "$WORK/sdist" "$WORK/built"
  "${PIP[@]}" download -q --no-deps --no-binary=:all: -d "$WORK/sdist" "$req" >"$WORK/sdist.log" 2>&1 ||
    { pip_excerpt "$WORK/sdist.log"; die "cannot get a wheel of $name for CPython $PY_VERSION on ${PLATFORMS[*]} ('$req'): neither a wheel nor a source archive was found"; }
  "${PIP[@]}" wheel -q --no-deps -w "$WORK/built" "$WORK"/sdist/* >"$WORK/built.log" 2>&1 ||
    { pip_excerpt "$WORK/built.log" 30; die "building a wheel of $name from its source archive failed ('$req')"; }
  local built
  built=$(ls "$WORK"/built/*.whl)
  helper is-pure "$built" ||
    die "cannot get a wheel of $name for the target: its source archive builds a platform-specific wheel $(basename "$built"); build it on a CPython $PY_VERSION ${PLATFORMS[0]} machine"
  mv "$built" "$OUT/"
  say "built $(basename "$built")"
}

# ---------------------------------------------------------------- 3. per target Python: resolve, download
declare -A CHOSEN_BY=()  # wheel file -> the target Pythons whose resolution chose it
for PY_VERSION in "${PY_VERSIONS[@]}"; do
  TARGET=(--only-binary=:all: --python-version "$PY_VERSION" --implementation cp "${PLATFORM_ARGS[@]}")
  say "CPython $PY_VERSION: resolving ${REQS[*]}"
  resolved=0
  network_retries=2
  for attempt in 1 2 3 4 5 6 7 8; do
    if "${PIP[@]}" install "${LAZY[@]}" --dry-run --ignore-installed -q --report "$WORK/report.json" "${TARGET[@]}" \
        --target "$WORK/target" --find-links "$OUT" "${REQS[@]}" >"$WORK/resolve.log" 2>&1; then
      resolved=1
      break
    fi
    if [ $network_retries -gt 0 ] && grep -q -i -e 'incomplete-download' -e 'connection' -e 'timed out' "$WORK/resolve.log"; then
      network_retries=$((network_retries - 1))
      say "CPython $PY_VERSION: the index's connection broke while resolving; trying again"
      continue
    fi
    missing=$(sed -n 's/^ERROR: No matching distribution found for //p' "$WORK/resolve.log" | head -1)
    if [ -z "$missing" ]; then
      pip_excerpt "$WORK/resolve.log" 25
      die "pip could not resolve the requirements for CPython $PY_VERSION (output above)"
    fi
    name=$(helper req-name "$missing")
    [ "$name" != czii-kaggle ] ||
      { pip_excerpt "$WORK/resolve.log"; die "czii_kaggle $CZII_VERSION does not install on CPython $PY_VERSION (requires-python?)"; }
    build_from_sdist "$missing" "$name"
  done
  [ $resolved = 1 ] || die "gave up resolving for CPython $PY_VERSION after 8 attempts (wheels built from source archives, broken connections)"

  SELECTED=$(helper select "$WORK/report.json" "$(echo $ROOTS | tr ' ' ',')" "$PY_VERSION" 2>"$WORK/select.log") ||
    { cat "$WORK/select.log" >&2; die "could not read pip's resolution report"; }
  sed "s/^/[build_wheels] CPython $PY_VERSION: /" "$WORK/select.log"
  mapfile -t BUNDLE <<<"$SELECTED"
  [ ${#BUNDLE[@]} -gt 0 ] && [ -n "${BUNDLE[0]}" ] || die "empty bundle for CPython $PY_VERSION (see above)"

  to_get=()
  for row in "${BUNDLE[@]}"; do
    IFS=$'\t' read -r name version file url digest <<<"$row"
    CHOSEN_BY[$file]="${CHOSEN_BY[$file]:-} $PY_VERSION"
    if [ -f "$OUT/$file" ] && { [ -z "$digest" ] || [ "$(sha_of "$OUT/$file")" = "$digest" ]; }; then
      continue
    fi
    to_get+=("$name==$version")
  done
  say "CPython $PY_VERSION: ${#BUNDLE[@]} wheels; ${#to_get[@]} to download, $((${#BUNDLE[@]} - ${#to_get[@]})) already in $OUT"
  for req in "${to_get[@]}"; do
    say "downloading $req for CPython $PY_VERSION"
    "${PIP[@]}" download -q --no-deps "${TARGET[@]}" -d "$OUT" "$req" >"$WORK/download.log" 2>&1 ||
      { pip_excerpt "$WORK/download.log"; die "cannot get a wheel of ${req%%==*} for CPython $PY_VERSION on ${PLATFORMS[*]} ($req)"; }
  done
  for row in "${BUNDLE[@]}"; do
    IFS=$'\t' read -r name version file url digest <<<"$row"
    [ -f "$OUT/$file" ] || die "pip download of $name==$version for CPython $PY_VERSION did not give the resolved file $file"
    if [ -n "$digest" ] && [ "$(sha_of "$OUT/$file")" != "$digest" ]; then
      die "$OUT/$file: sha256 differs from the index's ($digest)"
    fi
  done
  for name in $REQUIRED_IN_BUNDLE; do
    printf '%s\n' "${BUNDLE[@]}" | cut -f1 | grep -qx "$name" || die "the bundle for CPython $PY_VERSION lacks $name (check the resolution above)"
  done
done

# ---------------------------------------------------------------- 4. tidy, manifest, archive
mapfile -t keep < <(printf '%s\n' "${!CHOSEN_BY[@]}" | LC_ALL=C sort)
printf '%s\n' "${keep[@]}" >"$WORK/keep.txt"
shopt -s nullglob
mapfile -t STALE < <(helper stale "$WORK/keep.txt" "$(IFS=,; echo "${PY_VERSIONS[*]}")" "$OUT"/*.whl)
shopt -u nullglob
for f in "${STALE[@]}"; do
  say "removing $(basename "$f") (an earlier build's, not in this bundle)"
  rm -f "$f"
done
for f in "${keep[@]}"; do printf '%s\t%s\n' "$OUT/$f" "${CHOSEN_BY[$f]}"; done >"$WORK/chosen.tsv"
helper manifest "$OUT/MANIFEST.tsv" "$WORK/chosen.tsv"
helper coverage "$OUT/MANIFEST.tsv" "$(IFS=,; echo "${PY_VERSIONS[*]}")" || { rm -f "$OUT/MANIFEST.tsv"; die "see above"; }
say "wrote $OUT/MANIFEST.tsv"
cp "$REPO/czii_kaggle/kaggle_install.py" "$OUT/install.py"
# Reproducible: fixed order, owner and time; gzip without a timestamp (level 1: wheels are zips already).
(cd "$OUT" && printf '%s\n' "${keep[@]}" MANIFEST.tsv install.py | LC_ALL=C sort |
  tar --owner=0 --group=0 --numeric-owner --mtime='2000-01-01 00:00:00Z' --mode='u+rw,go+r' \
    --transform="s,^,$ARCHIVE_NAME/," -cf - -T - | gzip -n -1 >"$WORK/archive.tar.gz")
mv "$WORK/archive.tar.gz" "$OUT/$ARCHIVE_NAME.tar.gz"
size=$(du -b "$OUT/$ARCHIVE_NAME.tar.gz" | cut -f1)
say "wrote $OUT/$ARCHIVE_NAME.tar.gz ($((size / 1000000)) MB, ${#keep[@]} wheels for CPython ${PY_VERSIONS[*]} + MANIFEST.tsv + install.py under $ARCHIVE_NAME/, sha256 $(sha_of "$OUT/$ARCHIVE_NAME.tar.gz"))"
say "install offline with: python $ARCHIVE_NAME/install.py   (or pip install --no-index --find-links DIR \"czii_kaggle[detect]\")"
