"""Settings: every problem names its setting; secrets never show in a repr."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sync_core.config import (
    ALL_SETTINGS,
    REQUIRED_SETTINGS,
    AppCredentialKind,
    ConflictPolicy,
    Settings,
    SyncDirection,
)
from sync_core.errors import SettingsError

ROOT = Path(__file__).resolve().parents[2]
KEY = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="


def valid_env(**overrides: str) -> dict[str, str]:
    env = {
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "TENANT_ID": "11111111-1111-1111-1111-111111111111",
        "CLIENT_ID": "22222222-2222-2222-2222-222222222222",
        "CLIENT_SECRET": "s3cret-value",
        "TOKEN_ENCRYPTION_KEY": KEY,
        "PUBLIC_BASE_URL": "https://sync.example.com",
        "CRM_BASE_URL": "https://crm.example.com/api",
        "CRM_API_KEY": "crm-key",
        "CRM_SIGNING_SECRET": "crm-signing",
    }
    env.update(overrides)
    return env


def test_valid_environment_builds_settings_with_defaults() -> None:
    settings = Settings.from_env(valid_env())
    assert settings.credential_kind is AppCredentialKind.CLIENT_SECRET
    assert settings.sync.direction is SyncDirection.BOTH
    assert settings.sync.conflict_policy is ConflictPolicy.LATEST_WINS
    assert settings.renewal_schedule == "0 0 */6 * * *"
    assert settings.crm_return_url_origin == "https://crm.example.com"
    assert settings.graph_base_url == "https://graph.microsoft.com/v1.0"
    assert settings.single_tenant
    assert settings.token_encryption_keys[0].key_id == "k1"
    assert len(settings.token_encryption_keys[0].raw()) == 32


@pytest.mark.parametrize("name", REQUIRED_SETTINGS)
def test_missing_required_setting_is_named(name: str) -> None:
    env = valid_env()
    del env[name]
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert name in caught.value.problems
    assert name in str(caught.value)


def test_every_problem_is_reported_at_once() -> None:
    env = valid_env(SYNC_DIRECTION="sideways", LEASE_SECONDS="-3", RENEWAL_SCHEDULE="0 */6 * * *")
    del env["CRM_API_KEY"]
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert set(caught.value.problems) == {
        "SYNC_DIRECTION",
        "LEASE_SECONDS",
        "RENEWAL_SCHEDULE",
        "CRM_API_KEY",
    }
    assert "one of both, crm_to_m365, m365_to_crm" in caught.value.problems["SYNC_DIRECTION"]


def test_storage_needs_a_connection_string_or_both_service_uris() -> None:
    env = valid_env()
    del env["AzureWebJobsStorage"]
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert {"AzureWebJobsStorage__tableServiceUri", "AzureWebJobsStorage__queueServiceUri"} <= set(
        caught.value.problems
    )
    settings = Settings.from_env(
        env
        | {
            "AzureWebJobsStorage__tableServiceUri": "https://acct.table.core.windows.net",
            "AzureWebJobsStorage__queueServiceUri": "https://acct.queue.core.windows.net",
            "AzureWebJobsStorage__clientId": "33333333-3333-3333-3333-333333333333",
        }
    )
    assert settings.storage.uses_identity


def test_exactly_one_app_credential() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(valid_env(FEDERATED_IDENTITY_CLIENT_ID="33333333-3333-3333-3333-333333333333"))
    assert "CLIENT_SECRET" in caught.value.problems
    env = valid_env(FEDERATED_IDENTITY_CLIENT_ID="33333333-3333-3333-3333-333333333333")
    del env["CLIENT_SECRET"]
    assert Settings.from_env(env).credential_kind is AppCredentialKind.MANAGED_IDENTITY


def test_malformed_encryption_key_is_named_without_echoing_it() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(valid_env(TOKEN_ENCRYPTION_KEY="k1:c2hvcnQ="))
    assert "TOKEN_ENCRYPTION_KEY" in caught.value.problems
    assert "c2hvcnQ=" not in str(caught.value)


def test_rotation_keeps_old_keys_for_decryption() -> None:
    newer = "k2:" + "A" * 43 + "="
    settings = Settings.from_env(valid_env(TOKEN_ENCRYPTION_KEY=f"{newer},{KEY}"))
    assert [key.key_id for key in settings.token_encryption_keys] == ["k2", "k1"]


def test_http_is_refused_except_for_localhost() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(valid_env(PUBLIC_BASE_URL="http://sync.example.com"))
    assert "PUBLIC_BASE_URL" in caught.value.problems
    assert Settings.from_env(valid_env(PUBLIC_BASE_URL="http://localhost:7071")).public_base_url


def test_consumer_tenant_is_refused() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(valid_env(TENANT_ID="consumers"))
    assert "TENANT_ID" in caught.value.problems


def test_secrets_do_not_show_in_repr() -> None:
    text = repr(Settings.from_env(valid_env()))
    for secret in ("s3cret-value", "crm-key", "crm-signing", "AAECAwQF"):
        assert secret not in text


def test_sample_settings_list_every_setting_and_are_valid() -> None:
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    missing = [name for name in ALL_SETTINGS if name not in sample]
    # The sample uses the connection-string form; the identity form is documented in the README.
    identity_only = {
        "AzureWebJobsStorage__tableServiceUri",
        "AzureWebJobsStorage__queueServiceUri",
        "AzureWebJobsStorage__clientId",
        "AzureWebJobsStorage__credential",
        "CLIENT_CERTIFICATE",
        "CLIENT_CERTIFICATE_THUMBPRINT",
        "FEDERATED_IDENTITY_CLIENT_ID",
    }
    assert set(missing) <= identity_only, missing
    Settings.from_env(sample)


def test_readme_settings_table_names_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    assert [name for name in ALL_SETTINGS if f"`{name}`" not in readme] == []
