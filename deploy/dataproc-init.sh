#!/bin/bash
# Dataproc initialisation action of one TAAR release, uploaded by CI to gs://<artifacts>/taar/<tag>/ and named
# by the DAGs of the same release (RELEASING.md, "Dataproc dependencies").
#
# 1. Installs the Python packages the Spark jobs need beyond the Dataproc image, offline, from the release's
#    wheelhouse (built by CI from requirements/dataproc.txt and constraints.txt): the same versions on every
#    node of every cluster, nothing fetched from a public index or bucket at boot.
# 2. On the master, exports TAAR_DEPLOY_TARGET=gcp to the Spark driver and, when the cluster's metadata names a
#    Secret Manager secret (taar-locale-noise-key-secret), its value as TAAR_LOCALE_NOISE_KEY (never printed).
#
# Overridable for tests: TAAR_METADATA (metadata reader), TAAR_PIP, TAAR_SPARK_ENV, TAAR_GCLOUD.
set -euo pipefail

METADATA="${TAAR_METADATA:-/usr/share/google/get_metadata_value}"
PIP="${TAAR_PIP:-/opt/conda/default/bin/pip}"
SPARK_ENV="${TAAR_SPARK_ENV:-/etc/spark/conf/spark-env.sh}"
GCLOUD="${TAAR_GCLOUD:-gcloud}"

meta() { "$METADATA" "attributes/$1" 2>/dev/null || true; }

wheelhouse="$(meta taar-wheelhouse)"
if [ -z "$wheelhouse" ]; then
  echo "dataproc-init: cluster metadata taar-wheelhouse is not set" >&2
  exit 1
fi
local_dir="$(mktemp -d)"
"$GCLOUD" storage cp "$wheelhouse/*" "$local_dir/"
"$PIP" install --no-index --find-links "$local_dir" -c "$local_dir/constraints.txt" -r "$local_dir/requirements.txt"

if [ "$(meta dataproc-role)" = "Master" ]; then
  # jobs can tell production from a local run (e.g. to refuse a development key)
  echo 'export TAAR_DEPLOY_TARGET=gcp' >> "$SPARK_ENV"
fi

secret="$(meta taar-locale-noise-key-secret)"
if [ -n "$secret" ] && [ "$(meta dataproc-role)" = "Master" ]; then
  key="$("$GCLOUD" secrets versions access latest --secret="$secret")"
  if [ -z "$key" ]; then
    echo "dataproc-init: secret $secret is empty" >&2
    exit 1
  fi
  printf 'export TAAR_LOCALE_NOISE_KEY=%q\n' "$key" >> "$SPARK_ENV"
  echo "dataproc-init: TAAR_LOCALE_NOISE_KEY set for the Spark driver from $secret"
fi
