#!/usr/bin/env bash
# The Entra ID app registration CRM users sign in to (DESIGN §3, Connect), with no client secret.
#
#   register-app.sh prepare   before provisioning. Creates the app registration (single tenant, the delegated
#                             Microsoft Graph permissions below) and its service principal, or updates the one
#                             named by ENTRA_CLIENT_ID; stores its client id as ENTRA_CLIENT_ID. Generates
#                             TOKEN_ENCRYPTION_KEY when none is set.
#   register-app.sh finish    after provisioning. Adds the OAuth redirect URI (OAUTH_REDIRECT_URI) and the
#                             federated identity credential that lets the function app's managed identity
#                             (MANAGED_IDENTITY_PRINCIPAL_ID) stand in for a client secret.
#   register-app.sh remove    after `azd down`: deletes the app registration if `prepare` created it.
#
# azd runs these as hooks (azure.yaml) with the environment's values as variables and `azd env set` to keep
# new ones. By hand, outside an azd environment, export the inputs first; new values are printed as `export`
# lines to keep. See docs/deploy.md.
#
# Why a script and not the Microsoft Graph Bicep extension: that extension is pulled from a registry when the
# template is built (bicepconfig.json), and this template must build offline; the federated credential also
# needs the managed identity's principal id, which exists only after provisioning.
set -euo pipefail

readonly GRAPH_APP_ID=00000003-0000-0000-c000-000000000000 # Microsoft Graph: the same app id in every tenant
# Delegated (user) permissions, DESIGN §1/§3: calendar, contacts, To Do tasks, incoming mail, sign-in.
readonly DELEGATED_SCOPES=(
  Calendars.ReadWrite
  Contacts.ReadWrite
  Tasks.ReadWrite
  Mail.Read
  User.Read
  offline_access
  openid
  profile
  email
)
readonly FIC_AUDIENCE=api://AzureADTokenExchange # the audience managed-identity assertions are issued for

# Written for bash 3.2 too (macOS): no mapfile, no empty-array expansion under `set -u`.
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT

log() { printf 'register-app: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

in_azd_env() { [[ -n "${AZURE_ENV_NAME:-}" ]] && command -v azd >/dev/null 2>&1; }

# Keep a value for later steps: in the azd environment, or printed for the caller to export.
remember() {
  if in_azd_env; then
    azd env set "$1" "$2" >/dev/null
  else
    printf 'export %s=%q\n' "$1" "$2"
  fi
}

require_az() {
  command -v az >/dev/null 2>&1 || die "the Azure CLI (az) is required: https://aka.ms/azure-cli"
  az account show >/dev/null 2>&1 || die "not signed in to the Azure CLI: run 'az login' (and 'azd auth login')"
  # `az ad` works in the tenant the CLI is signed in to; the app registration must be in the tenant of the
  # subscription azd deploys to, or the federated credential's issuer would not match the managed identity.
  if [[ -n "${AZURE_SUBSCRIPTION_ID:-}" ]]; then
    local cli_tenant subscription_tenant
    cli_tenant=$(az account show --query tenantId -o tsv)
    subscription_tenant=$(az account show --subscription "$AZURE_SUBSCRIPTION_ID" --query tenantId -o tsv)
    [[ "$cli_tenant" == "$subscription_tenant" ]] ||
      die "the Azure CLI is signed in to tenant $cli_tenant, the subscription is in $subscription_tenant:" \
        "run 'az login --tenant $subscription_tenant'"
  fi
}

# Entra ID replicates a new application for a few seconds before every endpoint knows it.
retry() {
  local attempt
  for attempt in 1 2 3 4 5 6; do
    if "$@"; then
      return 0
    fi
    log "retrying in $((attempt * 5))s: ${*:1:4}"
    sleep $((attempt * 5))
  done
  "$@"
}

# requiredResourceAccess JSON for the delegated scopes, ids looked up by name on Microsoft Graph's service
# principal (ids are stable, but a name is what a reviewer can check).
required_resource_access() {
  local published scope id entries=""
  published=$(az ad sp show --id "$GRAPH_APP_ID" --query "oauth2PermissionScopes[].[value, id]" -o tsv) ||
    die "cannot read Microsoft Graph's published permissions"
  for scope in "${DELEGATED_SCOPES[@]}"; do
    id=$(awk -v want="$scope" '$1 == want { print $2 }' <<<"$published")
    [[ -n "$id" ]] || die "Microsoft Graph publishes no delegated permission named $scope"
    entries+="${entries:+,}{\"id\":\"$id\",\"type\":\"Scope\"}"
  done
  printf '[{"resourceAppId":"%s","resourceAccess":[%s]}]' "$GRAPH_APP_ID" "$entries"
}

ensure_token_encryption_key() {
  if [[ -n "${TOKEN_ENCRYPTION_KEY:-}" ]]; then
    return
  fi
  # keyid:base64 of 32 random bytes (AES-256-GCM), the format sync_core/config.py reads.
  remember TOKEN_ENCRYPTION_KEY "k1:$(head -c 32 /dev/urandom | base64 | tr -d '\n')"
  log "generated TOKEN_ENCRYPTION_KEY (key id k1)"
}

prepare() {
  require_az
  ensure_token_encryption_key
  local access="$workdir/required-resource-access.json" app_id="${ENTRA_CLIENT_ID:-}"
  required_resource_access >"$access"
  if [[ -n "$app_id" ]]; then
    az ad app show --id "$app_id" --query appId -o tsv >/dev/null 2>&1 ||
      die "ENTRA_CLIENT_ID=$app_id is not an app registration in this tenant"
    az ad app update --id "$app_id" --required-resource-accesses "@$access"
    log "updated app registration $app_id"
  else
    local display_name="${ENTRA_APP_DISPLAY_NAME:-crm-m365-sync-${AZURE_ENV_NAME:-default}}"
    app_id=$(az ad app create --display-name "$display_name" --sign-in-audience AzureADMyOrg \
      --required-resource-accesses "@$access" --query appId -o tsv)
    remember ENTRA_CLIENT_ID "$app_id"
    remember ENTRA_APP_CREATED_BY_SCRIPT true
    log "created app registration '$display_name' ($app_id)"
  fi
  # The enterprise application (service principal): users sign in to it and admins consent to it.
  if ! az ad sp show --id "$app_id" --query id -o tsv >/dev/null 2>&1; then
    retry az ad sp create --id "$app_id" --query id -o tsv >/dev/null
    log "created service principal for $app_id"
  fi
}

finish() {
  require_az
  local app_id="${ENTRA_CLIENT_ID:?ENTRA_CLIENT_ID is not set: run 'register-app.sh prepare' first}"
  local redirect_uri="${OAUTH_REDIRECT_URI:?OAUTH_REDIRECT_URI is not set: it is an output of infra/main.bicep}"
  local principal_id="${MANAGED_IDENTITY_PRINCIPAL_ID:?MANAGED_IDENTITY_PRINCIPAL_ID is not set: an output of infra/main.bicep}"
  local tenant_id="${AZURE_TENANT_ID:-}"
  [[ -n "$tenant_id" ]] || tenant_id=$(az account show --query tenantId -o tsv)

  # Web redirect URI of the OAuth callback, added to (not replacing) any the app already has.
  local existing_uris uri uris=()
  existing_uris=$(az ad app show --id "$app_id" --query "web.redirectUris[]" -o tsv)
  if ! grep -Fxq -- "$redirect_uri" <<<"$existing_uris"; then
    while IFS= read -r uri; do
      if [[ -n "$uri" ]]; then
        uris+=("$uri")
      fi
    done <<<"$existing_uris"
    retry az ad app update --id "$app_id" --web-redirect-uris ${uris[@]+"${uris[@]}"} "$redirect_uri"
    log "added redirect URI $redirect_uri"
  fi

  # Federated identity credential: Entra ID accepts a token of the function app's managed identity as this
  # app's client assertion (app setting FEDERATED_IDENTITY_CLIENT_ID), so no secret exists to leak or rotate.
  local login_endpoint issuer credential_name credential existing
  login_endpoint=$(az cloud show --query endpoints.activeDirectory -o tsv) # https://login.microsoftonline.com
  issuer="${login_endpoint%/}/${tenant_id}/v2.0"
  credential_name="function-app-$(printf '%s' "${AZURE_ENV_NAME:-default}" | tr -c 'A-Za-z0-9_-' '-')"
  credential="$workdir/federated-credential.json"
  printf '{"name":"%s","issuer":"%s","subject":"%s","audiences":["%s"],"description":"%s"}' \
    "$credential_name" "$issuer" "$principal_id" "$FIC_AUDIENCE" \
    "Managed identity of the CRM sync function app (azd environment ${AZURE_ENV_NAME:-default})" >"$credential"
  existing=$(az ad app federated-credential list --id "$app_id" \
    --query "[?name=='$credential_name'].id | [0]" -o tsv)
  if [[ -n "$existing" ]]; then
    az ad app federated-credential update --id "$app_id" --federated-credential-id "$existing" \
      --parameters "@$credential"
  else
    retry az ad app federated-credential create --id "$app_id" --parameters "@$credential" >/dev/null
  fi
  log "federated credential '$credential_name': issuer $issuer, subject $principal_id"

  if [[ "${ENTRA_GRANT_ADMIN_CONSENT:-false}" == "true" ]]; then
    retry az ad app permission admin-consent --id "$app_id"
    log "granted tenant-wide admin consent"
  else
    log "next: a Global Administrator (or Privileged Role / Cloud Application Administrator) opens"
    log "  ${ADMIN_CONSENT_URL:-<FUNCTION_APP_URL>/api/admin/consent} once, so users connect without a consent prompt"
  fi
}

remove() {
  if [[ "${ENTRA_APP_CREATED_BY_SCRIPT:-false}" != "true" || -z "${ENTRA_CLIENT_ID:-}" ]]; then
    log "app registration not created by this script (or already removed): left as is"
    return
  fi
  require_az
  az ad app delete --id "$ENTRA_CLIENT_ID"
  log "deleted app registration $ENTRA_CLIENT_ID (restorable from Entra ID 'Deleted applications' for 30 days)"
  remember ENTRA_CLIENT_ID ""
  remember ENTRA_APP_CREATED_BY_SCRIPT false
}

case "${1:-}" in
  prepare) prepare ;;
  finish) finish ;;
  remove) remove ;;
  *) die "usage: $0 prepare|finish|remove" ;;
esac
