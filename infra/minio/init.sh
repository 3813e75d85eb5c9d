#!/bin/sh
# One-shot set-up of the compose MinIO (service `minio-init`), idempotent:
#   1. the bucket `hare`;
#   2. the policy `hare-bucket` (infra/minio/hare-bucket-policy.json: that bucket only, no admin);
#   3. the user HARE_S3_ACCESS_KEY / HARE_S3_SECRET_KEY with that policy attached.
# The Ray nodes and the driver get only that user; the root credentials stay in this container
# and in `minio`.
set -eu
mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing local/hare
mc admin policy create local hare-bucket /init/hare-bucket-policy.json
mc admin user add local "$HARE_S3_ACCESS_KEY" "$HARE_S3_SECRET_KEY"   # creates, or resets the secret
if ! mc admin policy attach local hare-bucket --user "$HARE_S3_ACCESS_KEY" 2>/tmp/attach.err; then
  # attaching a policy the user already has is an error for mc; anything else is fatal
  mc admin user info local "$HARE_S3_ACCESS_KEY" | grep -q hare-bucket || { cat /tmp/attach.err >&2; exit 1; }
fi
echo "minio-init: bucket hare, policy hare-bucket, user $HARE_S3_ACCESS_KEY ready"
