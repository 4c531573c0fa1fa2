"""infra/scripts/register-app.sh, run against stand-ins for `az` and `azd` that record every call.

The stand-ins answer like the real CLIs for the calls the script makes and fail on any other, so the tests see
exactly what the script would ask Entra ID for: the delegated permissions, the redirect URI, the federated
credential (issuer, subject, audience), and never a client secret.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.infra.bicep import INFRA

SCRIPT = INFRA / "scripts" / "register-app.sh"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
TENANT = "11111111-2222-3333-4444-555555555555"
APP_ID = "99999999-8888-7777-6666-555555555555"
PRINCIPAL = "abcdefab-cdef-abcd-efab-cdefabcdefab"
# Microsoft Graph's published delegated permissions, as `az ad sp show` lists them (ids are made up here: the
# script must look them up by name, not carry its own).
PUBLISHED = {
    "Calendars.ReadWrite": "10000000-0000-0000-0000-000000000001",
    "Contacts.ReadWrite": "10000000-0000-0000-0000-000000000002",
    "Tasks.ReadWrite": "10000000-0000-0000-0000-000000000003",
    "Mail.Read": "10000000-0000-0000-0000-000000000004",
    "User.Read": "10000000-0000-0000-0000-000000000005",
    "offline_access": "10000000-0000-0000-0000-000000000006",
    "openid": "10000000-0000-0000-0000-000000000007",
    "profile": "10000000-0000-0000-0000-000000000008",
    "email": "10000000-0000-0000-0000-000000000009",
    "Mail.ReadWrite": "10000000-0000-0000-0000-000000000010",  # published, not requested
}

AZ_STUB = r"""#!/usr/bin/env bash
# Stand-in for the Azure CLI: logs each call, keeps a copy of each @file argument, answers known calls.
n=$(( $(wc -l < "$STUB_DIR/az.log") + 1 ))
printf '%s\n' "$*" >> "$STUB_DIR/az.log"
for arg in "$@"; do
  case "$arg" in @*) cp "${arg#@}" "$STUB_DIR/file-$n.json" ;; esac
done
case "$*" in
  "account show") ;;
  "account show --query tenantId -o tsv") echo "$STUB_TENANT" ;;
  "account show --subscription $AZURE_SUBSCRIPTION_ID --query tenantId -o tsv")
    echo "${STUB_SUBSCRIPTION_TENANT:-$STUB_TENANT}" ;;
  "ad sp show --id 00000003-0000-0000-c000-000000000000 --query oauth2PermissionScopes[].[value, id] -o tsv")
    cat "$STUB_DIR/published.tsv" ;;
  "ad sp show --id $STUB_APP_ID --query id -o tsv")
    [[ -n "${STUB_SP_EXISTS:-}" ]] || exit 3
    echo sp-object-id ;;
  "ad sp create --id $STUB_APP_ID --query id -o tsv") echo sp-object-id ;;
  "ad app create "*) echo "$STUB_APP_ID" ;;
  "ad app show --id $STUB_APP_ID --query appId -o tsv") echo "$STUB_APP_ID" ;;
  "ad app show --id $STUB_APP_ID --query web.redirectUris[] -o tsv") printf '%s' "${STUB_REDIRECT_URIS:-}" ;;
  "ad app update "*) ;;
  "cloud show --query endpoints.activeDirectory -o tsv") echo "https://login.microsoftonline.com" ;;
  "ad app federated-credential list --id $STUB_APP_ID "*) echo "${STUB_EXISTING_CREDENTIAL:-}" ;;
  "ad app federated-credential create "* | "ad app federated-credential update "*) echo "{}" ;;
  "ad app permission admin-consent --id $STUB_APP_ID") ;;
  "ad app delete --id $STUB_APP_ID") ;;
  *) echo "az stand-in: unexpected call: az $*" >&2; exit 99 ;;
esac
"""

AZD_STUB = r"""#!/usr/bin/env bash
[[ "$1 $2" == "env set" && $# -eq 4 ]] || { echo "azd stand-in: unexpected call: azd $*" >&2; exit 99; }
printf '%s=%s\n' "$3" "$4" >> "$STUB_DIR/azd.env"
"""


@dataclass(frozen=True)
class Run:
    stdout: str
    stderr: str
    az_calls: list[str]
    azd_env: dict[str, str]
    files: dict[int, str]  # az call number (1-based) → content of its @file argument

    def calls(self, prefix: str) -> list[tuple[int, str]]:
        return [(n, call) for n, call in enumerate(self.az_calls, start=1) if call.startswith(prefix)]

    def json_for(self, prefix: str) -> object:
        ((number, _),) = self.calls(prefix)
        return json.loads(self.files[number])


@pytest.fixture
def stub_dir(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("az", AZ_STUB), ("azd", AZD_STUB)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "az.log").write_text("")
    (tmp_path / "published.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in PUBLISHED.items()))
    return tmp_path


def run_script(stub_dir: Path, step: str, env: dict[str, str], *, azd: bool = True, ok: bool = True) -> Run:
    bash = shutil.which("bash")
    assert bash is not None
    path = f"{stub_dir / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin"
    base = {"PATH": path, "HOME": str(stub_dir), "STUB_DIR": str(stub_dir), "STUB_TENANT": TENANT}
    base["STUB_APP_ID"] = APP_ID
    if azd:
        base["AZURE_ENV_NAME"] = "dev"
        base["AZURE_SUBSCRIPTION_ID"] = "22222222-3333-4444-5555-666666666666"
    else:
        (stub_dir / "bin" / "azd").unlink()
    completed = subprocess.run(
        [bash, str(SCRIPT), step],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (completed.returncode == 0) == ok, completed.stderr
    azd_env_file = stub_dir / "azd.env"
    azd_env = dict(
        line.split("=", 1)
        for line in (azd_env_file.read_text().splitlines() if azd_env_file.exists() else [])
    )
    files = {int(p.stem.split("-")[1]): p.read_text() for p in stub_dir.glob("file-*.json")}
    az_calls = (stub_dir / "az.log").read_text().splitlines()
    return Run(completed.stdout, completed.stderr, az_calls, azd_env, files)


def test_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=10)


def test_prepare_creates_a_single_tenant_app_with_the_delegated_permissions(stub_dir: Path) -> None:
    run = run_script(stub_dir, "prepare", {})
    ((number, create),) = run.calls("ad app create")
    assert "--sign-in-audience AzureADMyOrg" in create
    assert "--display-name crm-m365-sync-dev" in create
    access = run.files[number]
    assert json.loads(access) == [
        {
            "resourceAppId": GRAPH_APP_ID,
            "resourceAccess": [
                {"id": PUBLISHED[scope], "type": "Scope"}  # delegated, never "Role" (application)
                for scope in (
                    "Calendars.ReadWrite",
                    "Contacts.ReadWrite",
                    "Tasks.ReadWrite",
                    "Mail.Read",
                    "User.Read",
                    "offline_access",
                    "openid",
                    "profile",
                    "email",
                )
            ],
        }
    ]
    assert run.calls(f"ad sp create --id {APP_ID}")
    assert run.azd_env["ENTRA_CLIENT_ID"] == APP_ID
    assert run.azd_env["ENTRA_APP_CREATED_BY_SCRIPT"] == "true"


def test_prepare_generates_a_token_encryption_key_in_the_format_config_reads(stub_dir: Path) -> None:
    run = run_script(stub_dir, "prepare", {})
    key_id, _, material = run.azd_env["TOKEN_ENCRYPTION_KEY"].partition(":")
    assert key_id == "k1"
    assert len(base64.b64decode(material, validate=True)) == 32
    assert material not in run.stdout + run.stderr  # the key is stored, not printed


def test_prepare_updates_an_existing_app_and_keeps_an_existing_key(stub_dir: Path) -> None:
    run = run_script(
        stub_dir,
        "prepare",
        {"ENTRA_CLIENT_ID": APP_ID, "TOKEN_ENCRYPTION_KEY": "k1:existing", "STUB_SP_EXISTS": "1"},
    )
    assert not run.calls("ad app create")
    assert not run.calls("ad sp create")
    ((_, update),) = run.calls("ad app update")
    assert f"--id {APP_ID} --required-resource-accesses @" in update
    assert run.azd_env == {}


def test_finish_adds_the_redirect_uri_and_the_federated_credential(stub_dir: Path) -> None:
    redirect = "https://func-abc.azurewebsites.net/api/auth/callback"
    run = run_script(
        stub_dir,
        "finish",
        {
            "ENTRA_CLIENT_ID": APP_ID,
            "OAUTH_REDIRECT_URI": redirect,
            "MANAGED_IDENTITY_PRINCIPAL_ID": PRINCIPAL,
            "AZURE_TENANT_ID": TENANT,
            "STUB_REDIRECT_URIS": "https://other.example/callback\n",
            "ADMIN_CONSENT_URL": "https://func-abc.azurewebsites.net/api/admin/consent",
        },
    )
    ((_, update),) = run.calls("ad app update")
    assert update.endswith(
        f"--web-redirect-uris https://other.example/callback {redirect}"
    )  # added, not replaced
    assert run.json_for("ad app federated-credential create") == {
        "name": "function-app-dev",
        "issuer": f"https://login.microsoftonline.com/{TENANT}/v2.0",
        "subject": PRINCIPAL,
        "audiences": ["api://AzureADTokenExchange"],
        "description": "Managed identity of the CRM sync function app (azd environment dev)",
    }
    assert not run.calls("ad app permission admin-consent")
    assert "/api/admin/consent" in run.stderr


def test_finish_is_idempotent(stub_dir: Path) -> None:
    redirect = "https://func-abc.azurewebsites.net/api/auth/callback"
    run = run_script(
        stub_dir,
        "finish",
        {
            "ENTRA_CLIENT_ID": APP_ID,
            "OAUTH_REDIRECT_URI": redirect,
            "MANAGED_IDENTITY_PRINCIPAL_ID": PRINCIPAL,
            "AZURE_TENANT_ID": TENANT,
            "STUB_REDIRECT_URIS": f"{redirect}\n",
            "STUB_EXISTING_CREDENTIAL": "fic-object-id",
            "ENTRA_GRANT_ADMIN_CONSENT": "true",
        },
    )
    assert not run.calls("ad app update")  # the redirect URI is already there
    assert not run.calls("ad app federated-credential create")
    assert run.calls(
        f"ad app federated-credential update --id {APP_ID} --federated-credential-id fic-object-id"
    )
    assert run.calls(f"ad app permission admin-consent --id {APP_ID}")


def test_by_hand_new_values_are_printed_to_export(stub_dir: Path) -> None:
    run = run_script(stub_dir, "prepare", {}, azd=False)
    exports = dict(line.removeprefix("export ").split("=", 1) for line in run.stdout.splitlines())
    assert exports["ENTRA_CLIENT_ID"] == APP_ID
    assert exports["TOKEN_ENCRYPTION_KEY"].startswith("k1:")
    assert "--display-name crm-m365-sync-default" in run.calls("ad app create")[0][1]


def test_remove_deletes_only_an_app_the_script_created(stub_dir: Path) -> None:
    kept = run_script(stub_dir, "remove", {"ENTRA_CLIENT_ID": APP_ID})
    assert kept.az_calls == []
    removed = run_script(
        stub_dir, "remove", {"ENTRA_CLIENT_ID": APP_ID, "ENTRA_APP_CREATED_BY_SCRIPT": "true"}
    )
    assert removed.calls(f"ad app delete --id {APP_ID}")
    assert removed.azd_env == {"ENTRA_CLIENT_ID": "", "ENTRA_APP_CREATED_BY_SCRIPT": "false"}


def test_no_step_creates_a_client_secret(stub_dir: Path) -> None:
    every_call = []
    for step, env in (
        ("prepare", {}),
        (
            "finish",
            {
                "ENTRA_CLIENT_ID": APP_ID,
                "OAUTH_REDIRECT_URI": "https://x.example/api/auth/callback",
                "MANAGED_IDENTITY_PRINCIPAL_ID": PRINCIPAL,
            },
        ),
    ):
        every_call += run_script(stub_dir, step, env).az_calls
    assert every_call
    assert not [call for call in every_call if "credential reset" in call or "password" in call.lower()]


def test_refuses_a_cli_signed_in_to_another_tenant(stub_dir: Path) -> None:
    run = run_script(stub_dir, "prepare", {"STUB_SUBSCRIPTION_TENANT": "other-tenant"}, ok=False)
    assert "run 'az login --tenant other-tenant'" in run.stderr
    assert not run.calls("ad ")


def test_usage_error_without_a_step() -> None:
    completed = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=10, check=False)
    assert completed.returncode == 1
    assert "usage:" in completed.stderr
    assert completed.stdout == ""
