"""Files around the template: azd's azure.yaml, infra/main.parameters.json, docs/deploy.md; no secret in
infra/."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.infra.bicep import (
    INFRA,
    Template,
    identifiers,
    is_string_literal,
    literal,
    load_template,
    lookup,
    object_properties,
)
from tests.infra.checks import KEY_MARKERS

ROOT = INFRA.parent
AZURE_YAML = ROOT / "azure.yaml"
PARAMETERS = INFRA / "main.parameters.json"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
SCRIPT = INFRA / "scripts" / "register-app.sh"

_BASE64_KEY = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{40,}={0,2}(?![A-Za-z0-9+/=])")
_LIST_CALL = re.compile(r"\blist(Keys|Secrets|AccountSas|ServiceSas|ConnectionStrings|Credentials?)\s*\(")
_SECRET_MAKING = ("credential reset", "add-password", "addPassword", "clientSecret", "client_secret")


@pytest.fixture(scope="module")
def template() -> Template:
    return load_template()


def read_simple_yaml(text: str) -> dict[str, object]:
    """The YAML subset azure.yaml keeps to: nested mappings of scalars by indentation, and comments."""
    root: dict[str, object] = {}
    stack: list[tuple[int, dict[str, object]]] = [(-1, root)]
    for raw in text.splitlines():
        line = "" if raw.lstrip().startswith("#") else raw.rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        key, sep, value = line.strip().partition(":")
        assert sep, f"azure.yaml: outside the subset this test reads: {raw!r}"
        assert not key.startswith("-"), f"azure.yaml: lists are outside the subset this test reads: {raw!r}"
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        if value.strip():
            parent[key] = value.strip()
        else:
            child: dict[str, object] = {}
            parent[key] = child
            stack.append((indent, child))
    return root


def _get(tree: dict[str, object], dotted: str) -> object:
    node: object = tree
    for key in dotted.split("."):
        assert isinstance(node, dict), f"azure.yaml: {dotted} crosses a scalar"
        assert key in node, f"azure.yaml: no {dotted}"
        node = node[key]
    return node


# ----------------------------------------------------------------------------------------------------------
# azure.yaml
# ----------------------------------------------------------------------------------------------------------


def test_azure_yaml_deploys_infra_and_the_function_app(template: Template) -> None:
    config = read_simple_yaml(AZURE_YAML.read_text())
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", str(_get(config, "name")))
    assert _get(config, "infra.provider") == "bicep"
    assert (
        ROOT / str(_get(config, "infra.path")) / f"{_get(config, 'infra.module')}.bicep"
    ) == INFRA / "main.bicep"
    services = _get(config, "services")
    assert isinstance(services, dict)
    assert list(services) == ["api"]
    assert _get(config, "services.api.host") == "function"
    assert _get(config, "services.api.language") == "python"
    assert (ROOT / str(_get(config, "services.api.project")) / "host.json").is_file()
    # azd finds the app to deploy to by its azd-service-name tag.
    service_param = template["modules/functionapp.bicep"].params()["serviceName"]
    assert literal(service_param.default) == "api"


@pytest.mark.parametrize(
    ("hook", "step"), [("preprovision", "prepare"), ("postprovision", "finish"), ("postdown", "remove")]
)
def test_azure_yaml_hooks_run_the_registration_script(hook: str, step: str) -> None:
    config = read_simple_yaml(AZURE_YAML.read_text())
    assert _get(config, f"hooks.{hook}.run") == f"bash ./infra/scripts/register-app.sh {step}"
    assert _get(config, f"hooks.{hook}.continueOnError") == "false"
    assert re.search(rf"^\s+{step}\) {step} ;;$", SCRIPT.read_text(), re.MULTILINE)


# ----------------------------------------------------------------------------------------------------------
# main.parameters.json
# ----------------------------------------------------------------------------------------------------------


def test_parameters_file_maps_every_parameter_to_the_azd_environment(template: Template) -> None:
    document = json.loads(PARAMETERS.read_text())
    assert document["$schema"].endswith("/deploymentParameters.json#")
    parameters: dict[str, dict[str, object]] = document["parameters"]
    assert set(parameters) == set(template.main.params())
    for name, entry in parameters.items():
        # Only ${VAR} references: values live in the azd environment (unset means the template default, or a
        # prompt when there is none), never in this committed file.
        assert re.fullmatch(r"\$\{[A-Z][A-Z0-9_]*\}", str(entry["value"])), (name, entry)


def test_parameters_use_the_names_the_registration_script_sets() -> None:
    parameters = json.loads(PARAMETERS.read_text())["parameters"]
    assert parameters["entraClientId"]["value"] == "${ENTRA_CLIENT_ID}"
    assert parameters["tokenEncryptionKey"]["value"] == "${TOKEN_ENCRYPTION_KEY}"
    script = SCRIPT.read_text()
    assert "remember ENTRA_CLIENT_ID" in script
    assert "remember TOKEN_ENCRYPTION_KEY" in script


def test_setting_parameters_are_named_after_their_setting(template: Template) -> None:
    """A parameter that feeds one app setting reads the azd variable of the setting's own name."""
    parameters = json.loads(PARAMETERS.read_text())["parameters"]
    # CLIENT_ID alone would be ambiguous beside the managed identity's client id in the azd environment.
    renamed = {"entraClientId": "ENTRA_CLIENT_ID"}
    main_params = template.main.params()
    app_settings = lookup(template.main.modules()["functionApp"].body, "params.appSettings")
    assert app_settings is not None
    checked = 0
    for setting, value in object_properties(app_settings).items():
        used = identifiers(value) & main_params.keys()
        if len(used) == 1 and not is_string_literal(value):
            (param,) = used
            assert parameters[param]["value"] == "${" + renamed.get(param, setting) + "}", param
            checked += 1
    assert checked >= 20


# ----------------------------------------------------------------------------------------------------------
# No secret in infra/
# ----------------------------------------------------------------------------------------------------------


def secret_findings(name: str, text: str) -> list[str]:
    problems = [f"{name}: {marker!r}" for marker in KEY_MARKERS if marker.lower() in text.lower()]
    problems += [f"{name}: {m.group(0)}" for m in _LIST_CALL.finditer(text)]
    problems += [
        f"{name}: key-like value {m.group(0)[:8]}…"
        for m in _BASE64_KEY.finditer(text)
        if re.search(r"[A-Z]", m.group(0))
        and re.search(r"[a-z]", m.group(0))
        and re.search(r"\d", m.group(0))
    ]
    problems += [f"{name}: makes a client secret ({word})" for word in _SECRET_MAKING if word in text]
    return problems


def infra_files() -> list[Path]:
    return [*sorted(p for p in INFRA.rglob("*") if p.is_file()), AZURE_YAML]


def test_no_secret_key_or_connection_string_in_infra() -> None:
    problems = [
        p
        for path in infra_files()
        for p in secret_findings(path.relative_to(ROOT).as_posix(), path.read_text())
    ]
    assert problems == []


@pytest.mark.parametrize(
    "planted",
    [
        "value: 'DefaultEndpointsProtocol=https;AccountName=st;AccountKey=abc'",
        "var k = account.listKeys().keys[0].value",
        "var k = listKeys(account.id, '2023-05-01')",
        "TOKEN_ENCRYPTION_KEY=k1:q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=",
        "az ad app credential reset --id $app_id",
    ],
)
def test_secret_scan_finds_planted_secrets(planted: str) -> None:
    assert secret_findings("planted", planted)


# ----------------------------------------------------------------------------------------------------------
# docs/deploy.md
# ----------------------------------------------------------------------------------------------------------


def test_deploy_doc_covers_every_parameter_and_step(template: Template) -> None:
    doc = DEPLOY_DOC.read_text()
    missing = [name for name in template.main.params() if f"`{name}`" not in doc]
    assert missing == [], "docs/deploy.md does not describe these parameters"
    for step in (
        "azd up",
        "register-app.sh",
        "/api/admin/consent",
        "azd down",
        "Rotat",
        "TOKEN_ENCRYPTION_KEY",
    ):
        assert step in doc, step
