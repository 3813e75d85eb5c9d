#!/bin/sh
# Refuse to start the compose stack with missing, short or well-known secrets.
# Compose runs it first (service `preflight`); every other service waits for it to succeed.
# Run it by hand too:  set -a; . infra/.env; set +a; sh infra/check-secrets.sh
# Generate a value:    openssl rand -hex 24   (or: python3 -c "import secrets; print(secrets.token_hex(24))")
MIN_LEN=${HARE_MIN_SECRET_LENGTH:-16}
[ "$MIN_LEN" -ge 16 ] 2>/dev/null || MIN_LEN=16   # the floor cannot be lowered
failed=0

fail() {
  echo "check-secrets: $1" >&2
  failed=1
}

# Values that documentation, examples and vendor defaults use: never a real secret.
weak() {
  lower=$(printf '%s' "$1" | tr '[:upper:]' '[:lower:]')
  case "$lower" in
    *change*me* | *changeme* | *example* | *password* | *secret* | *minioadmin* | *default* | *placeholder* | *todo* | *xxxx* | *12345678* | admin* | hare | prefect | ray | root | test*)
      return 0 ;;
  esac
  return 1
}

# NAME: a user name (3+ characters, not a vendor default)
check_user() {
  eval "value=\${$1:-}"
  if [ -z "$value" ]; then fail "$1 is not set (infra/.env)"; return; fi
  if [ "${#value}" -lt 3 ]; then fail "$1 is shorter than 3 characters"; fi
  case $(printf '%s' "$value" | tr '[:upper:]' '[:lower:]') in
    minioadmin | admin | root) fail "$1 is a well-known default user name" ;;
  esac
}

# NAME: a password / token (MIN_LEN+ characters, not a known example value)
check_secret() {
  eval "value=\${$1:-}"
  if [ -z "$value" ]; then fail "$1 is not set (infra/.env)"; return; fi
  if [ "${#value}" -lt "$MIN_LEN" ]; then fail "$1 is shorter than $MIN_LEN characters"; fi
  if weak "$value"; then fail "$1 looks like an example or default value"; fi
}

check_user MINIO_ROOT_USER
check_secret MINIO_ROOT_PASSWORD
check_user HARE_S3_ACCESS_KEY
check_secret HARE_S3_SECRET_KEY
check_secret RAY_AUTH_TOKEN
check_secret GRAFANA_ADMIN_PASSWORD

# PREFECT_AUTH_STRING is user:password (basic auth of the Prefect API and UI)
case "${PREFECT_AUTH_STRING:-}" in
  "") fail "PREFECT_AUTH_STRING is not set (infra/.env), expected user:password" ;;
  *:*)
    prefect_password=${PREFECT_AUTH_STRING#*:}
    if [ "${#prefect_password}" -lt "$MIN_LEN" ]; then
      fail "PREFECT_AUTH_STRING: the password after ':' is shorter than $MIN_LEN characters"
    elif weak "$prefect_password"; then
      fail "PREFECT_AUTH_STRING: the password looks like an example or default value"
    fi ;;
  *) fail "PREFECT_AUTH_STRING must be user:password" ;;
esac

if [ -n "${MINIO_ROOT_USER:-}" ] && [ "${MINIO_ROOT_USER:-}" = "${HARE_S3_ACCESS_KEY:-}" ]; then
  fail "HARE_S3_ACCESS_KEY must differ from MINIO_ROOT_USER: the workers get a bucket-scoped user, not root"
fi
if [ -n "${MINIO_ROOT_PASSWORD:-}" ] && [ "${MINIO_ROOT_PASSWORD:-}" = "${HARE_S3_SECRET_KEY:-}" ]; then
  fail "HARE_S3_SECRET_KEY must differ from MINIO_ROOT_PASSWORD"
fi

if [ "$failed" -ne 0 ]; then
  echo "check-secrets: fix infra/.env (see infra/.env.example), then run docker compose up again" >&2
  exit 1
fi
echo "check-secrets: ok"
