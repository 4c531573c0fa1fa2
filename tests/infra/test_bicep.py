"""infra/*.bicep: every file parses, the template is secure by default, it sets every setting the app reads.

Each security check runs twice: on the real template (no problems) and on a mutated copy that breaks exactly
one property (the check names it). A check that cannot fail would pass the first test and fail the second.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from sync_core.config import ALL_SETTINGS, ConflictPolicy, DescriptionPolicy, Settings, SyncDirection
from tests.infra import checks
from tests.infra.bicep import (
    INFRA,
    BicepFile,
    Template,
    bicep_files,
    literal,
    load_template,
    lookup,
    named_children,
    node_text,
)

# Settings config.py reads that the template deliberately does not set, each with its reason.
EXCLUDED_SETTINGS: Mapping[str, str] = {
    "AzureWebJobsStorage": "a connection string with a key; AzureWebJobsStorage__* (identity) replace it",
    "CLIENT_SECRET": "the app signs in with a federated credential of its managed identity, no secret",
    "CLIENT_CERTIFICATE": "as CLIENT_SECRET: config.py takes exactly one credential, the federated one",
    "CLIENT_CERTIFICATE_THUMBPRINT": "read only together with CLIENT_CERTIFICATE",
    "TABLE_NAME_PREFIX": "test-only: isolates tests sharing one Azurite; a deployment has its own account",
}

EXPECTED_MODULES = {
    "modules/identity.bicep",
    "modules/storage.bicep",
    "modules/functionapp.bicep",
    "modules/keyvault.bicep",
    "modules/monitoring.bicep",
    "modules/rbac.bicep",
}


def check_settings(template: Template) -> list[str]:
    return checks.check_settings_coverage(template, ALL_SETTINGS, EXCLUDED_SETTINGS)


SECURITY_CHECKS: Mapping[str, checks.Check] = {
    "no key access": checks.check_no_key_access,
    "storage account": checks.check_storage_account,
    "function app": checks.check_function_app,
    "identity-based storage settings": checks.check_identity_storage_settings,
    "role assignments": checks.check_role_assignments,
    "key vault": checks.check_key_vault,
    "no secret outputs": checks.check_no_secret_outputs,
    "monitoring": checks.check_monitoring,
    "outputs": checks.check_outputs,
    "settings coverage": check_settings,
}


@pytest.fixture(scope="module")
def template() -> Template:
    return load_template()


# ----------------------------------------------------------------------------------------------------------
# Syntax and layout
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: p.relative_to(INFRA).as_posix())
def test_bicep_file_parses_without_error_nodes(path: Path, template: Template) -> None:
    assert template[path.relative_to(INFRA).as_posix()].syntax_errors() == []


def test_parse_check_reports_broken_bicep(template: Template) -> None:
    storage = template["modules/storage.bicep"]
    broken = BicepFile.parse(
        storage.name, storage.text.replace("allowSharedKeyAccess: false", "allowSharedKeyAccess:")
    )
    assert broken.syntax_errors(), "a property without a value must show as an error node"


def test_main_composes_every_module_and_nothing_else(template: Template) -> None:
    used = {module.path for module in template.main.modules().values()}
    on_disk = {name for name in template.files if name != "main.bicep"}
    assert used == on_disk == EXPECTED_MODULES


def test_template_is_self_contained(template: Template) -> None:
    """Local modules only: no registry module, template spec or extension fetched when the template builds."""
    for module in template.main.modules().values():
        assert re.fullmatch(r"modules/[a-z-]+\.bicep", module.path), module.path
    for file in template.files.values():
        for line in file.text.splitlines():
            assert not re.match(r"\s*(extension|import|provider)\s", line), f"{file.name}: {line}"
    assert not (INFRA / "bicepconfig.json").exists()


def test_main_deploys_at_subscription_scope(template: Template) -> None:
    scope = next(n for n in named_children(template.main.root) if n.type == "target_scope_assignment")
    assert literal(named_children(scope)[-1]) == "subscription"


# ----------------------------------------------------------------------------------------------------------
# Security properties on the real template
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SECURITY_CHECKS)
def test_template_passes(name: str, template: Template) -> None:
    assert SECURITY_CHECKS[name](template) == []


# ----------------------------------------------------------------------------------------------------------
# ... and each check fails on a mutated copy
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    file: str
    old: str
    new: str
    check: str  # key of SECURITY_CHECKS
    reported: str  # a fragment of the problem the check must report


MUTATIONS: Mapping[str, Mutation] = {
    "shared key access on": Mutation(
        "modules/storage.bicep",
        "allowSharedKeyAccess: false",
        "allowSharedKeyAccess: true",
        "storage account",
        "allowSharedKeyAccess is true",
    ),
    "shared key access left to the default": Mutation(
        "modules/storage.bicep",
        "    allowSharedKeyAccess: false // no account keys, no SAS signed with keys: Entra ID + RBAC only\n",
        "",
        "storage account",
        "allowSharedKeyAccess is missing",
    ),
    "TLS 1.0 allowed": Mutation(
        "modules/storage.bicep", "'TLS1_2'", "'TLS1_0'", "storage account", "minimumTlsVersion is 'TLS1_0'"
    ),
    "public blob access on": Mutation(
        "modules/storage.bicep",
        "allowBlobPublicAccess: false",
        "allowBlobPublicAccess: true",
        "storage account",
        "allowBlobPublicAccess is true",
    ),
    "listKeys method in an output": Mutation(
        "modules/storage.bicep",
        "output id string = account.id",
        "output id string = account.listKeys().keys[0].value",
        "no key access",
        "listKeys() reads keys",
    ),
    "listKeys function in a variable": Mutation(
        "modules/rbac.bicep",
        "resource storageAccount",
        "var leaked = listKeys(storageAccount.id, '2023-05-01').keys[0].value\nresource storageAccount",
        "no key access",
        "listKeys() reads keys",
    ),
    "connection string with a key": Mutation(
        "modules/functionapp.bicep",
        "AzureWebJobsStorage__credential: 'managedidentity'",
        "AzureWebJobsStorage: 'DefaultEndpointsProtocol=https;AccountName=st;AccountKey=${identityClientId}'",
        "identity-based storage settings",
        "AzureWebJobsStorage (a connection string) is set",
    ),
    "connection string marker": Mutation(
        "modules/functionapp.bicep",
        "AzureWebJobsStorage__credential: 'managedidentity'",
        "AzureWebJobsStorage: 'DefaultEndpointsProtocol=https;AccountName=st;AccountKey=${identityClientId}'",
        "no key access",
        "string holds a key ('AccountKey=')",
    ),
    "storage credential not the identity": Mutation(
        "modules/functionapp.bicep",
        "AzureWebJobsStorage__credential: 'managedidentity'",
        "AzureWebJobsStorage__credential: 'connectionstring'",
        "identity-based storage settings",
        "AzureWebJobsStorage__credential must be 'managedidentity'",
    ),
    "App Insights local auth on": Mutation(
        "modules/monitoring.bicep",
        "DisableLocalAuth: true",
        "DisableLocalAuth: false",
        "monitoring",
        "local auth is not disabled",
    ),
    "App Insights ingestion by key": Mutation(
        "modules/functionapp.bicep",
        "'ClientId=${identityClientId};Authorization=AAD'",
        "''",
        "monitoring",
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    ),
    "Key Vault access policies": Mutation(
        "modules/keyvault.bicep",
        "enableRbacAuthorization: true",
        "enableRbacAuthorization: false",
        "key vault",
        "enableRbacAuthorization is false",
    ),
    "secret as a plain app setting": Mutation(
        "main.bicep",
        "TOKEN_ENCRYPTION_KEY: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.tokenEncryptionKeyUri})'",
        "TOKEN_ENCRYPTION_KEY: tokenEncryptionKey",
        "key vault",
        "setting TOKEN_ENCRYPTION_KEY must be a Key Vault reference",
    ),
    "secret parameter not @secure()": Mutation(
        "main.bicep",
        "@secure()\n@description('CRM_API_KEY",
        "@description('CRM_API_KEY",
        "key vault",
        "crmApiKeySecret must come from a @secure() param",
    ),
    "secret in an output": Mutation(
        "main.bicep",
        "output AZURE_LOCATION string = location",
        "output AZURE_LOCATION string = '${location}${crmSigningSecret}'",
        "no secret outputs",
        "output AZURE_LOCATION exposes crmSigningSecret",
    ),
    "role assignment with a fixed name": Mutation(
        "modules/rbac.bicep",
        "name: guid(keyVault.id, principalId, keyVaultSecretsUserRoleId)",
        "name: 'key-vault-secrets-user'",
        "role assignments",
        "keyVaultSecretsUser is not named with guid()",
    ),
    "role id without its name beside it": Mutation(
        "modules/rbac.bicep",
        " // Monitoring Metrics Publisher\n",
        "\n",
        "role assignments",
        "has no '// Monitoring Metrics Publisher' comment",
    ),
    "role scoped wider than its resource": Mutation(
        "modules/rbac.bicep",
        "scope: keyVault",
        "scope: storageAccount",
        "role assignments",
        "Key Vault Secrets User must be scoped to a Microsoft.KeyVault/vaults",
    ),
    "an extra, unexpected role": Mutation(
        "modules/rbac.bicep",
        "'3913510d-42f4-4e42-8a64-420c390055eb' // Monitoring Metrics Publisher",
        "'b24988ac-6180-42a0-ab88-20f7382dd24c' // Contributor",
        "role assignments",
        "role b24988ac-6180-42a0-ab88-20f7382dd24c is assigned but not expected",
    ),
    "plan not Flex Consumption": Mutation(
        "modules/functionapp.bicep", "name: 'FC1'", "name: 'Y1'", "function app", "sku.name is 'Y1'"
    ),
    "runtime not Python 3.11": Mutation(
        "modules/functionapp.bicep", "version: '3.11'", "version: '3.12'", "function app", "runtime.version"
    ),
    "plain HTTP allowed": Mutation(
        "modules/functionapp.bicep",
        "httpsOnly: true",
        "httpsOnly: false",
        "function app",
        "httpsOnly is false",
    ),
    "deployment package read with a key": Mutation(
        "modules/functionapp.bicep",
        "type: 'UserAssignedIdentity'",
        "type: 'StorageAccountConnectionString'",
        "function app",
        "authentication.type is 'StorageAccountConnectionString'",
    ),
    "basic publishing credentials on": Mutation(
        "modules/functionapp.bicep",
        "name: 'scm'\n  properties: {\n    allow: false",
        "name: 'scm'\n  properties: {\n    allow: true",
        "function app",
        "allow is true",
    ),
    "a setting the code reads is dropped": Mutation(
        "main.bicep",
        "      SWEEP_AGE_MINUTES: string(sweepAgeMinutes)\n",
        "",
        "settings coverage",
        "setting SWEEP_AGE_MINUTES (read by sync_core/config.py) is not set",
    ),
    "an excluded setting is set": Mutation(
        "main.bicep",
        "      CLIENT_ID: entraClientId\n",
        "      CLIENT_ID: entraClientId\n      CLIENT_SECRET: crmApiKey\n",
        "settings coverage",
        "setting CLIENT_SECRET is excluded",
    ),
    "a misspelt setting": Mutation(
        "main.bicep",
        "SYNC_DIRECTION: syncDirection",
        "SYNC_DIRECTON: syncDirection",
        "settings coverage",
        "setting SYNC_DIRECTON is neither read by config.py",
    ),
    "a Flex-rejected platform setting": Mutation(
        "modules/functionapp.bicep",
        "AzureWebJobsStorage__credential: 'managedidentity'",
        "AzureWebJobsStorage__credential: 'managedidentity'\n    FUNCTIONS_WORKER_RUNTIME: 'python'",
        "settings coverage",
        "setting FUNCTIONS_WORKER_RUNTIME is neither read",
    ),
    "webhook output on the wrong route": Mutation(
        "main.bicep",
        "/api/graph/notifications'",
        "/api/notifications'",
        "outputs",
        "output GRAPH_WEBHOOK_URL must be",
    ),
}


@pytest.mark.parametrize("name", MUTATIONS)
def test_check_reports_mutation(name: str, template: Template) -> None:
    mutation = MUTATIONS[name]
    mutated = template.mutated(mutation.file, mutation.old, mutation.new)
    assert mutated[mutation.file].syntax_errors() == [], "a mutation must stay valid Bicep"
    problems = SECURITY_CHECKS[mutation.check](mutated)
    assert any(mutation.reported in problem for problem in problems), problems


@pytest.mark.parametrize(
    "symbol",
    [
        "blobDataOwner",
        "queueDataContributor",
        "tableDataContributor",
        "keyVaultSecretsUser",
        "metricsPublisher",
    ],
)
def test_removing_a_role_assignment_is_reported(symbol: str, template: Template) -> None:
    rbac = template["modules/rbac.bicep"]
    removed = rbac.resource(symbol)
    role_ids = checks.role_ids_in(rbac, removed.body)
    (role_name,) = [name for name, role in checks.REQUIRED_ROLES.items() if role.id in role_ids]
    mutated = template.with_file(rbac.without(removed.declaration))
    assert mutated["modules/rbac.bicep"].syntax_errors() == []
    assert f"no role assignment grants {role_name} ({checks.REQUIRED_ROLES[role_name].id})" in (
        checks.check_role_assignments(mutated)
    )


# ----------------------------------------------------------------------------------------------------------
# Settings: what a deployment gives the app is what config.py accepts
# ----------------------------------------------------------------------------------------------------------


def test_exclusions_are_settings_config_reads() -> None:
    assert set(EXCLUDED_SETTINGS) <= set(ALL_SETTINGS)


def test_deployed_settings_load_with_defaults(template: Template) -> None:
    settings = Settings.from_env(checks.deployed_settings(template))
    assert settings.storage.uses_identity
    assert settings.credential_kind.value == "managed_identity"
    assert settings.single_tenant


def test_deployed_settings_load_at_every_parameter_bound(template: Template) -> None:
    """Whatever main.bicep's decorators let through (bounds, allowed values), config.py accepts."""
    variants = checks.parameter_variants(template)
    assert len(variants) > 20
    for name, value in variants:
        Settings.from_env(checks.deployed_settings(template, {name: value}))


@pytest.mark.parametrize(
    ("param", "enum_type"),
    [
        ("syncDirection", SyncDirection),
        ("conflictPolicy", ConflictPolicy),
        ("descriptionPolicy", DescriptionPolicy),
    ],
)
def test_allowed_values_are_the_policy_enums(
    param: str, enum_type: type[enum.Enum], template: Template
) -> None:
    allowed = template.main.params()[param].decorator_argument("allowed")
    assert allowed is not None
    assert [literal(item) for item in named_children(allowed)] == [member.value for member in enum_type]


def test_sync_queue_and_its_poison_queue_exist(template: Template) -> None:
    storage = template["modules/storage.bicep"]
    queues = storage.resources_of_type("Microsoft.Storage/storageAccounts/queueServices/queues")
    assert {queue.symbol: node_text(queue.body).count("syncQueueName") for queue in queues} == {
        "syncQueue": 1,
        "syncPoisonQueue": 1,
    }
    assert [node_text(name) for q in queues if (name := q.get("name")) is not None] == [
        "syncQueueName",
        "'${syncQueueName}-poison'",
    ]
    passed = lookup(template.main.modules()["storage"].body, "params.syncQueueName")
    assert passed is not None
    assert node_text(passed) == "syncQueueName"
