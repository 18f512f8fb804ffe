#!/bin/sh
# Copy model versions that appear under $MODELS_SOURCE (an rclone path: a bucket prefix, an HTTP
# folder, a local folder) into $MODELS_DIR, where the ranker's watcher loads them.
#
#   sync-models.sh once   copy what is new, then exit; non-zero when $MODELS_DIR holds no version
#                         afterwards (the init container: the pod does not start without a model)
#   sync-models.sh loop   the same every $SYNC_INTERVAL_S seconds until SIGTERM (the sidecar)
#
# A version folder must appear whole: it is copied beside the repository into $MODELS_DIR/.incoming
# (a hidden name, which the service never reads as a model; same filesystem, so the rename is
# atomic), its model.onnx is checked against the onnx_sha256 in its model.json, and only then is it
# renamed to $MODELS_DIR/<model>/<version>. A version still being uploaded (no model.json yet, or a
# model.onnx that does not match it) is skipped and tried again next time. Add-only: a version that
# is present is never copied again, changed or deleted (retire versions with the admin API).
set -u

src=${MODELS_SOURCE:?MODELS_SOURCE is not set}
src=${src%/}
dst=${MODELS_DIR:-/models}
interval=${SYNC_INTERVAL_S:-30}
stage=$dst/.incoming

log() { echo "sync-models: $*"; }
# No config file: remotes and their options come from MODELS_SOURCE and RCLONE_* variables.
rc() { rclone --config "" "$@"; }

# Names the service accepts (contract/modelspec.py NAME_PATTERN; versions are integers >= 1).
valid_model() {
  case $1 in
    '' | [!A-Za-z0-9]* | *[!A-Za-z0-9_.-]*) return 1 ;;
  esac
  [ ${#1} -le 64 ]
}
valid_version() {
  case $1 in
    '' | 0* | *[!0-9]*) return 1 ;;
  esac
}

# List the sub-folders of an rclone path, one name per line, without the trailing slash.
subdirs() { rc lsf --dirs-only "$1" | sed 's:/$::'; }

# Copy one version into the stage, check it, rename it into place. 0: synced; 1: failed; 2: not complete yet.
sync_version() {
  m=$1 v=$2 tmp=$stage/$1/$2
  rm -rf "$tmp" && mkdir -p "$stage/$m" "$dst/$m" || return 1
  if ! rc copy "$src/$m/$v" "$tmp"; then
    rm -rf "$tmp"; log "$m/$v: copy failed"; return 1
  fi
  if [ ! -f "$tmp/model.json" ] || [ ! -f "$tmp/model.onnx" ]; then
    rm -rf "$tmp"; log "$m/$v: no model.json or model.onnx yet, will look again"; return 2
  fi
  want=$(sed -n 's/.*"onnx_sha256": *"\([0-9a-f]\{64\}\)".*/\1/p' "$tmp/model.json")
  have=$(sha256sum "$tmp/model.onnx" | cut -d' ' -f1)
  if [ "$want" != "$have" ]; then
    rm -rf "$tmp"; log "$m/$v: model.onnx does not match model.json (upload in progress?), will look again"; return 2
  fi
  mv "$tmp" "$dst/$m/$v" || { rm -rf "$tmp"; log "$m/$v: rename failed"; return 1; }
  log "$m/$v: synced"
}

sync_once() {
  failed=0
  models=$(subdirs "$src") || { log "cannot list $src"; return 1; }
  for model in $models; do
    valid_model "$model" || continue
    versions=$(subdirs "$src/$model") || { log "cannot list $src/$model"; failed=1; continue; }
    for version in $versions; do
      valid_version "$version" || continue
      [ -e "$dst/$model/$version" ] && continue
      sync_version "$model" "$version"
      [ $? -eq 1 ] && failed=1
    done
  done
  return $failed
}

has_a_version() {
  for dir in "$dst"/*/*/; do
    [ -f "${dir}model.json" ] && return 0
  done
  return 1
}

case ${1:-} in
  once)
    sync_once
    if ! has_a_version; then
      log "no complete model version under $src yet"; exit 1
    fi
    ;;
  loop)
    sleeper=
    trap 'log "stopping"; [ -z "$sleeper" ] || kill "$sleeper" 2>/dev/null; exit 0' TERM INT
    while :; do
      sync_once
      sleep "$interval" &
      sleeper=$!
      wait "$sleeper"  # returns at once on SIGTERM (a foreground sleep would delay the trap)
      sleeper=
    done
    ;;
  *)
    echo "usage: sync-models.sh once|loop" >&2; exit 2 ;;
esac
