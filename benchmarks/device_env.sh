# Sourced by the scripts that run on the GPU machine (device_check.sh, msrc_device.sh), from the
# repository root. That machine has jax, flax, optax, orbax, numpy, opencv, scipy, PIL, tqdm and
# torch, but no ml-collections (and maybe no absl-py). Their wheels (and tqdm's, should an image
# lack it) travel in $GWSSS_WHEELS (default .wheels, filled by `make device-wheels`); each one
# whose package is missing is installed from there, offline, into a temporary folder put on
# PYTHONPATH. Sets PY (the interpreter: $PYTHON or python3); returns 2 where a module is missing
# and no wheel is there.
PY=${PYTHON:-python3}
_wheels=${GWSSS_WHEELS:-.wheels}
_site=${TMPDIR:-/tmp}/gwsss_device_site
_need=()
for _pair in ml_collections:ml_collections absl:absl_py tqdm:tqdm; do
  _module=${_pair%%:*}; _wheel=${_pair##*:}
  if ! "$PY" -c "import $_module" 2>/dev/null; then
    _found=$(ls "$_wheels"/"$_wheel"-*.whl 2>/dev/null | head -n 1)
    if [ -z "$_found" ]; then
      echo "error: Python module $_module is missing and $_wheels holds no $_wheel wheel;" \
           "run 'make device-wheels' where pip reaches PyPI and carry $_wheels" >&2
      return 2
    fi
    _need+=("$_found")
  fi
done
if [ ${#_need[@]} -gt 0 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$_site" "${_need[@]}" || return 2
  export PYTHONPATH="$_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
