"""Azure Functions triggers (v2 programming model). Each trigger parses its binding, makes one call into
sync_core, and maps the outcome to a response; no Graph, storage or mapping logic lives here."""

from __future__ import annotations

import logging

import azure.functions as func

from sync_core import wiring
from sync_core.responses import json_response
from sync_core.services.health import check_health

log = logging.getLogger(__name__)

# Fail at start, naming every missing or malformed setting. Reading settings is the only work done at import.
wiring.check_settings()

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.function_name("health")
@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    report = check_health(wiring.container().health_probes())
    return json_response(report.as_json(), status=200 if report.healthy else 503)
