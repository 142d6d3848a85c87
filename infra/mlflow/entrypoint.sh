#!/bin/sh
# Entrypoint of the cktf MLflow image (infra/mlflow/Dockerfile): writes the configuration file of
# MLflow's basic-auth app (`mlflow server --app-name basic-auth`) from the environment, then runs
# `mlflow "$@"`. Used by infra/mlflow/docker-compose.yml and infra/k8s/mlflow.yaml.
#
#   MLFLOW_AUTH_DATABASE_URI        store of users and permissions: a second database ("mlflow_auth")
#                                   on the PostgreSQL of the tracking store
#   MLFLOW_AUTH_DEFAULT_PERMISSION  what a user may do where nothing was granted: READ (default) or
#                                   NO_PERMISSIONS; EDIT and MANAGE are refused
#   MLFLOW_AUTH_ADMIN_USERNAME      the admin MLflow creates on its first start (MLflow reads both
#   MLFLOW_AUTH_ADMIN_PASSWORD      variables itself too); the password needs 12+ characters
#   MLFLOW_AUTH_CONFIG_PATH         where the file goes (default /tmp/mlflow-auth/basic_auth.ini)
#
# The file holds passwords: it is written with mode 0600, on the tmpfs (compose) or in-memory
# emptyDir (Kubernetes) the deployments mount there. Without MLFLOW_AUTH_DATABASE_URI nothing is
# written and MLFLOW_AUTH_CONFIG_PATH may name a file mounted from a Secret; `--app-name basic-auth`
# with neither is refused, since MLflow would fall back to a SQLite file inside the container.
set -eu

fail() {
    echo "mlflow-entrypoint: $*" >&2
    exit 64
}

# One "key = value" line of the [mlflow] section: a single line, with % doubled for configparser.
single_line() {
    case "$2" in
        *'
'*) fail "$1 must not contain a line break" ;;
    esac
}
kv() {
    printf '%s = %s\n' "$1" "$(printf '%s' "$2" | sed 's/%/%%/g')"
}

auth_app=no
for arg in "$@"; do
    case "$arg" in
        basic-auth | --app-name=basic-auth) auth_app=yes ;;
    esac
done

if [ -n "${MLFLOW_AUTH_DATABASE_URI-}" ]; then
    MLFLOW_AUTH_CONFIG_PATH="${MLFLOW_AUTH_CONFIG_PATH:-/tmp/mlflow-auth/basic_auth.ini}"
    export MLFLOW_AUTH_CONFIG_PATH
    permission="${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}"
    case "$permission" in
        READ | NO_PERMISSIONS) ;;
        *) fail "MLFLOW_AUTH_DEFAULT_PERMISSION is $permission: use READ or NO_PERMISSIONS" ;;
    esac
    admin_user="${MLFLOW_AUTH_ADMIN_USERNAME-}"
    admin_secret="${MLFLOW_AUTH_ADMIN_PASSWORD-}"
    [ -n "$admin_user" ] || fail "set MLFLOW_AUTH_ADMIN_USERNAME"
    [ -n "$admin_secret" ] || fail "set MLFLOW_AUTH_ADMIN_PASSWORD"
    case "$admin_secret" in
        change-me*) fail "MLFLOW_AUTH_ADMIN_PASSWORD is still the placeholder of .env.example" ;;
    esac
    case "${MLFLOW_FLASK_SERVER_SECRET_KEY-}" in
        change-me*) fail "MLFLOW_FLASK_SERVER_SECRET_KEY is still the placeholder of .env.example" ;;
    esac
    single_line MLFLOW_AUTH_DATABASE_URI "$MLFLOW_AUTH_DATABASE_URI"
    single_line MLFLOW_AUTH_ADMIN_USERNAME "$admin_user"
    single_line MLFLOW_AUTH_ADMIN_PASSWORD "$admin_secret"
    (
        umask 077
        mkdir -p "$(dirname "$MLFLOW_AUTH_CONFIG_PATH")"
        {
            echo "[mlflow]"
            kv default_permission "$permission"
            kv database_uri "$MLFLOW_AUTH_DATABASE_URI"
            kv admin_username "$admin_user"
            kv admin_password "$admin_secret"
        } >"$MLFLOW_AUTH_CONFIG_PATH"
        chmod 0600 "$MLFLOW_AUTH_CONFIG_PATH"
    )
elif [ "$auth_app" = yes ] && [ -z "${MLFLOW_AUTH_CONFIG_PATH-}" ]; then
    fail "--app-name basic-auth needs MLFLOW_AUTH_DATABASE_URI (or MLFLOW_AUTH_CONFIG_PATH naming a config file)"
fi

exec mlflow "$@"
