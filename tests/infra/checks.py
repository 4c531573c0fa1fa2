"""What "secure by default" and "complete" mean for infra/, as checks over the parsed template.

Each check takes a ``Template`` and returns the problems it finds, one readable line each; an empty list is a
pass. The tests run every check on the real template (expecting no problems) and on mutated copies (expecting
the one problem the mutation introduces), so a check that cannot fail is caught too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from tree_sitter import Node

from tests.infra.bicep import (
    EXPRESSION,
    BicepFile,
    Literal,
    Resource,
    Template,
    call_arguments,
    call_name,
    identifiers,
    is_string_literal,
    literal,
    lookup,
    named_children,
    node_text,
    object_properties,
    string_text,
    walk,
)

Check = Callable[[Template], list[str]]


@dataclass(frozen=True)
class Role:
    id: str  # built-in role definition id: the same in every tenant
    scope_type: str  # the one resource type the assignment may be scoped to (least privilege)


# The roles the function app's identity needs (DESIGN §10: managed identity, RBAC), and nothing else.
REQUIRED_ROLES: Mapping[str, Role] = {
    "Storage Blob Data Owner": Role(
        "b7e6dc6d-f1e8-4753-8033-0f276bb0955b", "Microsoft.Storage/storageAccounts"
    ),
    "Storage Queue Data Contributor": Role(
        "974c5e8b-45b9-4653-ba55-5f855dd0fb88", "Microsoft.Storage/storageAccounts"
    ),
    "Storage Table Data Contributor": Role(
        "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3", "Microsoft.Storage/storageAccounts"
    ),
    "Key Vault Secrets User": Role("4633458b-17de-408a-b874-0445c86b69e6", "Microsoft.KeyVault/vaults"),
    "Monitoring Metrics Publisher": Role(
        "3913510d-42f4-4e42-8a64-420c390055eb", "Microsoft.Insights/components"
    ),
}

# Settings holding secrets: Key Vault references only, never values.
SECRET_SETTINGS: tuple[str, ...] = ("TOKEN_ENCRYPTION_KEY", "CRM_API_KEY", "CRM_SIGNING_SECRET")

# Settings the platform reads (not sync_core/config.py) that the template sets on purpose.
PLATFORM_SETTINGS: Mapping[str, str] = {
    "AzureWebJobsStorage__blobServiceUri": "the Functions host's own blobs (leases, timers), by identity",
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "where telemetry goes (an endpoint and component id, not a key)",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "Entra ID ingestion with the managed identity",
}

# Markers of storage/Service Bus/Event Hubs keys and SAS tokens in any text.
KEY_MARKERS: tuple[str, ...] = (
    "AccountKey=",
    "SharedAccessKey=",
    "SharedAccessSignature=",
    "DefaultEndpointsProtocol=",
    "InstrumentationKey=",
    "-----BEGIN",
)
_LIST_FUNCTION = re.compile(r"^list([A-Z]\w*)?$")  # list(), listKeys, listSecrets, listAccountSas, ...
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _where(file: BicepFile, node: Node) -> str:
    return f"{file.name}:{node.start_point.row + 1}"


def _show(node: Node | None) -> str:
    return "missing" if node is None else node_text(node)


def _bicep(value: Literal) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"'{value}'" if isinstance(value, str) else str(value)


def expect_literals(file: BicepFile, resource: Resource, expected: Mapping[str, Literal]) -> list[str]:
    """Each dotted property of ``resource`` must be exactly the given constant (not an expression)."""
    problems: list[str] = []
    for path, want in expected.items():
        node = resource.get(path)
        if node is None or literal(node) != want:
            where = _where(file, node if node is not None else resource.declaration)
            problems.append(f"{where}: {resource.symbol}.{path} is {_show(node)}, must be {_bicep(want)}")
    return problems


def _one_or_more(template: Template, type_: str) -> tuple[list[tuple[BicepFile, Resource]], list[str]]:
    found = template.resources(type_)
    return found, ([] if found else [f"no {type_} resource in the template"])


# ----------------------------------------------------------------------------------------------------------
# No keys anywhere
# ----------------------------------------------------------------------------------------------------------


def check_no_key_access(template: Template) -> list[str]:
    """No list*() call (listKeys, listSecrets, listAccountSas, ...) and no connection string with a key."""
    problems: list[str] = []
    for file in template.files.values():
        for call in file.calls():
            name = call_name(call)
            if _LIST_FUNCTION.match(name):
                problems.append(f"{_where(file, call)}: {name}() reads keys or secrets into the deployment")
        for string in file.strings():
            text = string_text(string)
            for marker in KEY_MARKERS:
                if marker.lower() in text.lower():
                    problems.append(f"{_where(file, string)}: string holds a key ({marker!r})")
    return problems


# ----------------------------------------------------------------------------------------------------------
# Storage
# ----------------------------------------------------------------------------------------------------------


def check_storage_account(template: Template) -> list[str]:
    accounts, problems = _one_or_more(template, "Microsoft.Storage/storageAccounts")
    for file, account in accounts:
        problems += expect_literals(
            file,
            account,
            {
                "properties.allowSharedKeyAccess": False,
                "properties.minimumTlsVersion": "TLS1_2",
                "properties.allowBlobPublicAccess": False,
                "properties.supportsHttpsTrafficOnly": True,
            },
        )
    return problems


# ----------------------------------------------------------------------------------------------------------
# App settings: where the template sets them
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    file: BicepFile
    value: Node


def _module_params(template: Template, module_file: BicepFile) -> Node | None:
    """The ``params`` object main.bicep passes to a module file."""
    for module in template.main.modules().values():
        if module.path == module_file.name:
            return lookup(module.body, "params")
    return None


def _settings_from(template: Template, file: BicepFile, node: Node, into: dict[str, Setting]) -> None:
    """Collect settings from an object, a union(...) of objects, or a module param fed from main.bicep."""
    if node.type == "object":
        for key, value in object_properties(node).items():
            into[key] = Setting(file, value)
    elif node.type == "call_expression" and call_name(node) == "union":
        for argument in call_arguments(node):  # later arguments win, as in ARM's union()
            _settings_from(template, file, argument, into)
    elif node.type == "identifier":
        name = node_text(node)
        if name in file.variables():
            _settings_from(template, file, file.variables()[name], into)
        elif name in file.params() and file is not template.main:
            passed = lookup(_module_params(template, file), name)
            if passed is not None:
                _settings_from(template, template.main, passed, into)


def app_settings(template: Template) -> dict[str, Setting]:
    """Every app setting the template gives the function app, with the node (in its file) that sets it."""
    settings: dict[str, Setting] = {}
    for file, site in template.resources("Microsoft.Web/sites"):
        array = site.get("properties.siteConfig.appSettings")
        for item in named_children(array) if array is not None and array.type == "array" else []:
            name = literal(lookup(item, "name"))
            value = lookup(item, "value")
            if isinstance(name, str) and value is not None:
                settings[name] = Setting(file, value)
    for file, config in template.resources("Microsoft.Web/sites/config"):
        properties = config.get("properties")
        if literal(config.get("name")) == "appsettings" and properties is not None:
            _settings_from(template, file, properties, settings)
    return settings


def check_settings_coverage(
    template: Template, read_by_code: Iterable[str], excluded: Mapping[str, str]
) -> list[str]:
    """Every setting the code reads is set, except the explicit exclusions; nothing unknown is set."""
    settings = app_settings(template)
    read = tuple(read_by_code)
    problems = [
        f"setting {name} (read by sync_core/config.py) is not set by the template"
        for name in read
        if name not in excluded and name not in settings
    ]
    problems += [
        f"setting {name} is excluded ({excluded[name]}) but the template sets it"
        for name in excluded
        if name in settings
    ]
    problems += [
        f"exclusion {name} is not a setting config.py reads: remove it"
        for name in excluded
        if name not in read
    ]
    problems += [
        f"setting {name} is neither read by config.py nor a known platform setting"
        for name in settings
        if name not in read and name not in PLATFORM_SETTINGS
    ]
    return problems


# ----------------------------------------------------------------------------------------------------------
# Function app: Flex Consumption, identity-based storage
# ----------------------------------------------------------------------------------------------------------


def check_function_app(template: Template) -> list[str]:
    plans, problems = _one_or_more(template, "Microsoft.Web/serverfarms")
    for file, plan in plans:
        problems += expect_literals(
            file, plan, {"sku.name": "FC1", "sku.tier": "FlexConsumption", "properties.reserved": True}
        )
    sites, missing = _one_or_more(template, "Microsoft.Web/sites")
    problems += missing
    for file, site in sites:
        problems += expect_literals(
            file,
            site,
            {
                "kind": "functionapp,linux",
                "identity.type": "UserAssigned",
                "properties.httpsOnly": True,
                "properties.siteConfig.minTlsVersion": "1.2",
                "properties.siteConfig.ftpsState": "Disabled",
                "properties.functionAppConfig.runtime.name": "python",
                "properties.functionAppConfig.runtime.version": "3.11",
                "properties.functionAppConfig.deployment.storage.type": "blobContainer",
                "properties.functionAppConfig.deployment.storage.authentication.type": "UserAssignedIdentity",
            },
        )
        for path in (
            "properties.keyVaultReferenceIdentity",
            "properties.functionAppConfig.deployment.storage.authentication.userAssignedIdentityResourceId",
        ):
            if site.get(path) is None:
                problems.append(f"{_where(file, site.declaration)}: {site.symbol}.{path} is missing")
    policies = {
        literal(policy.get("name")): (file, policy)
        for file, policy in template.resources("Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    }
    for name in ("ftp", "scm"):
        if name not in policies:
            problems.append(f"basic publishing credentials ({name}) are not switched off")
        else:
            problems += expect_literals(*policies[name], {"properties.allow": False})
    return problems


def check_identity_storage_settings(template: Template) -> list[str]:
    """Host and service reach storage as the managed identity: URIs + credential, no connection string."""
    settings = app_settings(template)
    problems: list[str] = []
    connection = settings.get("AzureWebJobsStorage")
    if connection is not None:
        where = _where(connection.file, connection.value)
        problems.append(f"{where}: AzureWebJobsStorage (a connection string) is set")
    credential = settings.get("AzureWebJobsStorage__credential")
    if credential is None or literal(credential.value) != "managedidentity":
        problems.append("AzureWebJobsStorage__credential must be 'managedidentity'")
    for suffix in ("clientId", "blobServiceUri", "queueServiceUri", "tableServiceUri"):
        setting = settings.get(f"AzureWebJobsStorage__{suffix}")
        if setting is None or literal(setting.value) in ("", None):
            problems.append(f"AzureWebJobsStorage__{suffix} is not set")
    return problems


# ----------------------------------------------------------------------------------------------------------
# Role assignments
# ----------------------------------------------------------------------------------------------------------


def role_ids_in(file: BicepFile, node: Node) -> set[str]:
    """Role definition ids an expression names: GUID strings in it, or in variables it refers to."""
    found = {string_text(s) for s in walk(node) if is_string_literal(s) and _GUID.match(string_text(s))}
    variables = file.variables()
    for name in identifiers(node) & variables.keys():
        found |= role_ids_in(file, variables[name])
    return found


def _rows_naming(file: BicepFile, role_id: str) -> list[int]:
    return [s.start_point.row for s in file.strings() if string_text(s) == role_id]


def check_role_assignments(template: Template) -> list[str]:
    problems: list[str] = []
    assigned: dict[str, list[tuple[BicepFile, Resource]]] = {}
    for file, assignment in template.resources("Microsoft.Authorization/roleAssignments"):
        name = assignment.get("name")
        if name is None or name.type != "call_expression" or call_name(name) != "guid":
            problems.append(
                f"{_where(file, assignment.declaration)}: {assignment.symbol} is not named with guid()"
            )
        elif len(call_arguments(name)) < 3:
            problems.append(
                f"{_where(file, name)}: {assignment.symbol}: guid() needs scope, principal and role"
            )
        role_definition = assignment.get("properties.roleDefinitionId")
        role_ids = role_ids_in(file, role_definition) if role_definition is not None else set()
        if len(role_ids) != 1:
            problems.append(f"{_where(file, assignment.declaration)}: {assignment.symbol}: no single role id")
        for role_id in role_ids:
            assigned.setdefault(role_id, []).append((file, assignment))
    known = {role.id: name for name, role in REQUIRED_ROLES.items()}
    problems += [
        f"role {role_id} is assigned but not expected (least privilege)"
        for role_id in assigned.keys() - known.keys()
    ]
    for role_name, role in REQUIRED_ROLES.items():
        if role.id not in assigned:
            problems.append(f"no role assignment grants {role_name} ({role.id})")
            continue
        for file, assignment in assigned[role.id]:
            problems += _check_role_scope(file, assignment, role_name, role)
            rows = _rows_naming(file, role.id)
            if not any(role_name in comment for row in rows for comment in file.comments_on_row(row)):
                problems.append(f"{file.name}: role id {role.id} has no '// {role_name}' comment beside it")
    return problems


def _check_role_scope(file: BicepFile, assignment: Resource, role_name: str, role: Role) -> list[str]:
    scope = assignment.get("scope")
    targets = {r.symbol: r for r in file.resources()}
    target = targets.get(node_text(scope)) if scope is not None else None
    if target is None or target.type.lower() != role.scope_type.lower():
        return [f"{_where(file, assignment.declaration)}: {role_name} must be scoped to a {role.scope_type}"]
    return []


# ----------------------------------------------------------------------------------------------------------
# Key Vault and secrets
# ----------------------------------------------------------------------------------------------------------


def _is_secure(file: BicepFile, name: str) -> bool:
    param = file.params().get(name)
    return param is not None and "secure" in param.decorators


def check_key_vault(template: Template) -> list[str]:
    vaults, problems = _one_or_more(template, "Microsoft.KeyVault/vaults")
    for file, vault in vaults:
        problems += expect_literals(file, vault, {"properties.enableRbacAuthorization": True})
        if vault.get("properties.accessPolicies") is not None:
            problems.append(f"{_where(file, vault.declaration)}: access policies alongside RBAC mode")
    secrets, missing = _one_or_more(template, "Microsoft.KeyVault/vaults/secrets")
    problems += missing
    for file, secret in secrets:
        value = secret.get("properties.value")
        if value is None or value.type != "identifier" or not _is_secure(file, node_text(value)):
            problems.append(
                f"{_where(file, secret.declaration)}: {secret.symbol} value is not a @secure() param"
            )
            continue
        passed = lookup(_module_params(template, file), node_text(value))
        source = node_text(passed) if passed is not None else None
        main_param = template.main.params().get(source or "")
        if main_param is None or "secure" not in main_param.decorators or main_param.default is not None:
            problems.append(f"main.bicep: {secret.symbol} must come from a @secure() param with no default")
    settings = app_settings(template)
    for name in SECRET_SETTINGS:
        setting = settings.get(name)
        text = string_text(setting.value) if setting is not None and is_string_literal(setting.value) else ""
        if not (text.startswith("@Microsoft.KeyVault(") and text.endswith(")")):
            shown = _show(setting.value if setting else None)
            problems.append(f"setting {name} must be a Key Vault reference, is {shown}")
    return problems


def check_no_secret_outputs(template: Template) -> list[str]:
    """No output (stored in deployment history, readable with Reader) refers to a @secure() param."""
    problems: list[str] = []
    for file in template.files.values():
        secure = {name for name, param in file.params().items() if "secure" in param.decorators}
        for output, value in file.outputs().items():
            leaked = identifiers(value) & secure
            if leaked:
                problems.append(f"{_where(file, value)}: output {output} exposes {', '.join(sorted(leaked))}")
    return problems


# ----------------------------------------------------------------------------------------------------------
# Monitoring
# ----------------------------------------------------------------------------------------------------------


def check_monitoring(template: Template) -> list[str]:
    components, problems = _one_or_more(template, "Microsoft.Insights/components")
    for file, component in components:
        properties = object_properties(component.get("properties") or component.body)
        # ARM property names are case-insensitive; the schema spells this one DisableLocalAuth.
        disable = next((v for k, v in properties.items() if k.lower() == "disablelocalauth"), None)
        if disable is None or literal(disable) is not True:
            problems.append(
                f"{_where(file, component.declaration)}: {component.symbol} local auth is not disabled"
            )
        if "WorkspaceResourceId" not in properties:
            problems.append(
                f"{_where(file, component.declaration)}: {component.symbol} is not workspace-based"
            )
    settings = app_settings(template)
    auth = settings.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING")
    text = string_text(auth.value) if auth is not None and is_string_literal(auth.value) else ""
    if not re.fullmatch(r"ClientId=\$\{[^}]+\};Authorization=AAD", text):
        problems.append(
            "APPLICATIONINSIGHTS_AUTHENTICATION_STRING must be 'ClientId=${<identity>};Authorization=AAD'"
        )
    if "APPLICATIONINSIGHTS_CONNECTION_STRING" not in settings:
        problems.append("APPLICATIONINSIGHTS_CONNECTION_STRING is not set")
    return problems


# ----------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------

ROUTE_OUTPUTS: Mapping[str, str] = {
    "GRAPH_WEBHOOK_URL": "/api/graph/notifications",
    "GRAPH_LIFECYCLE_URL": "/api/graph/lifecycle",
    "OAUTH_REDIRECT_URI": "/api/auth/callback",
    "ADMIN_CONSENT_URL": "/api/admin/consent",
}
# Read by infra/scripts/register-app.sh finish (azd passes outputs to hooks as environment variables).
SCRIPT_OUTPUTS: tuple[str, ...] = ("AZURE_TENANT_ID", "MANAGED_IDENTITY_PRINCIPAL_ID", "OAUTH_REDIRECT_URI")


def check_outputs(template: Template) -> list[str]:
    outputs = template.main.outputs()
    problems: list[str] = []
    app_url = outputs.get("FUNCTION_APP_URL")
    if app_url is None:
        problems.append("main.bicep: no FUNCTION_APP_URL output")
    for name, route in ROUTE_OUTPUTS.items():
        value = outputs.get(name)
        text = string_text(value) if value is not None and is_string_literal(value) else ""
        if not (text.startswith("${") and text.endswith(route)):
            problems.append(
                f"main.bicep: output {name} must be '<function app URL>{route}', is {_show(value)}"
            )
    problems += [
        f"main.bicep: no {name} output (register-app.sh needs it)"
        for name in SCRIPT_OUTPUTS
        if name not in outputs
    ]
    return problems


# ----------------------------------------------------------------------------------------------------------
# The settings a deployment produces, as the app would read them
# ----------------------------------------------------------------------------------------------------------

SAMPLE_GUID = "0f0e0d0c-0b0a-4908-8706-050403020100"

# Values of the right shape for what the template leaves to ARM or the platform at deploy time: tenant(),
# environment(), module outputs, and Key Vault references (the platform puts the secret's value there).
RUNTIME_SAMPLES: Mapping[str, str] = {
    "TENANT_ID": SAMPLE_GUID,
    "AUTHORITY_HOST": "https://login.microsoftonline.com/",
    "TOKEN_ENCRYPTION_KEY": "k1:" + "A" * 43 + "=",  # keyid:base64 of 32 zero bytes
    "CRM_API_KEY": "sample-crm-api-key",
    "CRM_SIGNING_SECRET": "sample-crm-signing-secret",
    "AzureWebJobsStorage__clientId": SAMPLE_GUID,
    "AzureWebJobsStorage__blobServiceUri": "https://stsample.blob.core.windows.net/",
    "AzureWebJobsStorage__queueServiceUri": "https://stsample.queue.core.windows.net/",
    "AzureWebJobsStorage__tableServiceUri": "https://stsample.table.core.windows.net/",
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "IngestionEndpoint=https://sample.in.applicationinsights.azure.com/",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": f"ClientId={SAMPLE_GUID};Authorization=AAD",
    "FEDERATED_IDENTITY_CLIENT_ID": SAMPLE_GUID,
    "PUBLIC_BASE_URL": "https://func-sample.azurewebsites.net",
}
# What an operator supplies for main.bicep parameters that have no default.
PARAM_SAMPLES: Mapping[str, object] = {
    "environmentName": "dev",
    "location": "swedencentral",
    "entraClientId": SAMPLE_GUID,
    "crmBaseUrl": "https://crm.example.com/api",
    "tokenEncryptionKey": RUNTIME_SAMPLES["TOKEN_ENCRYPTION_KEY"],
    "crmApiKey": RUNTIME_SAMPLES["CRM_API_KEY"],
    "crmSigningSecret": RUNTIME_SAMPLES["CRM_SIGNING_SECRET"],
}
_UNKNOWN = object()


def main_param_values(template: Template, overrides: Mapping[str, object] | None = None) -> dict[str, object]:
    """Each main.bicep parameter's value: the override, else its constant default, else a sample."""
    values: dict[str, object] = {}
    for name, param in template.main.params().items():
        default = literal(param.default) if param.default is not None else EXPRESSION
        values[name] = PARAM_SAMPLES.get(name, _UNKNOWN) if default is EXPRESSION else default
    values.update(overrides or {})
    return values


def _evaluate(node: Node, params: Mapping[str, object]) -> object:
    """The few expression forms main.bicep uses for settings; ``_UNKNOWN`` for anything else."""
    value = literal(node)
    if value is not EXPRESSION:
        return value
    if node.type == "identifier":
        return params.get(node_text(node), _UNKNOWN)
    if node.type == "call_expression" and call_name(node) == "string" and len(call_arguments(node)) == 1:
        inner = _evaluate(call_arguments(node)[0], params)
        if isinstance(inner, bool):
            return "True" if inner else "False"  # as ARM's string() writes booleans
        return str(inner) if isinstance(inner, int | str) else _UNKNOWN
    if node.type == "ternary_expression":
        condition = _evaluate(node.child_by_field_name("condition") or node, params)
        branch = node.child_by_field_name("consequence" if condition is True else "alternative")
        return _evaluate(branch, params) if isinstance(condition, bool) and branch is not None else _UNKNOWN
    return _UNKNOWN


def deployed_settings(template: Template, overrides: Mapping[str, object] | None = None) -> dict[str, str]:
    """The app settings a deployment with these main.bicep parameter values gives the app, resolved."""
    params = main_param_values(template, overrides)
    env: dict[str, str] = {}
    for name, setting in app_settings(template).items():
        # Module-internal expressions (identity, storage URIs) are other resources' outputs: samples stand in.
        value = _evaluate(setting.value, params) if setting.file is template.main else literal(setting.value)
        if not isinstance(value, str) or value.startswith("@Microsoft.KeyVault("):
            assert name in RUNTIME_SAMPLES, f"cannot evaluate setting {name}: add a sample to RUNTIME_SAMPLES"
            value = RUNTIME_SAMPLES[name]
        env[name] = value
    return env


def parameter_variants(template: Template) -> list[tuple[str, object]]:
    """Edge values main.bicep accepts for parameters feeding settings: bounds, allowed values, booleans."""
    main = template.main
    used = set().union(*(identifiers(s.value) for s in app_settings(template).values() if s.file is main))
    variants: list[tuple[str, object]] = []
    for name, param in main.params().items():
        if name not in used:
            continue
        for bound in ("minValue", "maxValue"):
            value = literal(param.decorator_argument(bound))
            if isinstance(value, int):
                variants.append((name, value))
        allowed = param.decorator_argument("allowed")
        if allowed is not None:
            variants += [(name, literal(item)) for item in named_children(allowed)]
        if param.type == "bool":
            variants += [(name, True), (name, False)]
        for bound in ("minLength", "maxLength"):
            length = literal(param.decorator_argument(bound))
            if isinstance(length, int) and param.type == "string":
                variants.append((name, "a" * length))
    return variants
