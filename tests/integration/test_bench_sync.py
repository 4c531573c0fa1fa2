"""The sync benchmarks still run (with tiny counts; the figures themselves are read from ``make bench``, never
asserted against targets), produce their figures, and stop what they started."""

from __future__ import annotations

from pathlib import Path

import pytest
from azure.data.tables import TableClient

from bench import initial_sync, sync_costs, sync_latency
from bench.table_meter import TableMeter
from devkit.azurite import AzuriteEndpoints

pytestmark = pytest.mark.slow


def test_the_latency_benchmark_times_changes_both_ways(azurite: AzuriteEndpoints, tmp_path: Path) -> None:
    lines: list[str] = []
    figures = sync_latency.run(
        changes=2, connection_string=azurite.connection_string, work_dir=tmp_path, report=lines.append
    )

    for direction in ("m365_to_crm", "crm_to_m365"):
        for name in (f"sync_latency_{direction}_p50_ms", f"sync_latency_{direction}_p95_ms"):
            assert figures[name]["unit"] == "ms"
            assert positive(figures[name]["value"])
    assert positive(figures["sync_latency_reconcile_run_p50_ms"]["value"])
    assert figures["sync_latency_queue_max_polling_ms"]["value"] == 200.0
    assert any("Graph requests" in line for line in lines)
    assert "Executed 'Functions.reconcile' (Succeeded" in (tmp_path / "host" / "host.log").read_text()
    assert processes_under(tmp_path) == []


def test_the_costs_benchmark_counts_graph_requests_and_table_transactions(
    azurite: AzuriteEndpoints, tmp_path: Path
) -> None:
    lines: list[str] = []
    figures = sync_costs.run(
        changes=12, connection_string=azurite.connection_string, work_dir=tmp_path, report=lines.append
    )

    assert figures["sync_costs_changes"]["value"] == 12
    assert positive(figures["graph_requests_per_change"]["value"])
    assert positive(figures["table_transactions_per_change"]["value"])
    assert figures["table_transactions_per_change"]["unit"] == "transactions"
    assert any(line.startswith("  table transactions:") and "links" in line for line in lines)
    assert processes_under(tmp_path) == []
    assert meters_of(azurite) == []


def test_the_initial_sync_benchmark_streams_a_seeded_mailbox_into_the_crm(
    azurite: AzuriteEndpoints, tmp_path: Path
) -> None:
    lines: list[str] = []
    figures = initial_sync.run(
        events=101,  # two delta pages
        small_events=10,
        connection_string=azurite.connection_string,
        work_dir=tmp_path,
        report=lines.append,
    )

    assert positive(figures["initial_sync_events_per_s"]["value"])
    assert positive(figures["initial_sync_peak_rss_mb"]["value"])
    assert positive(figures["initial_sync_small_peak_rss_mb"]["value"])
    assert figures["initial_sync_events"]["value"] == 101
    assert "initial_sync_10000_events_extrapolated_s" in figures
    assert any("101 events synced" in line and "2 pages" in line for line in lines)
    assert processes_under(tmp_path) == []


def test_the_table_meter_counts_a_batch_as_one_transaction(azurite: AzuriteEndpoints) -> None:
    with TableMeter(azurite.connection_string) as meter:
        with TableClient.from_connection_string(meter.connection_string, "metered") as table:
            table.create_table()
            table.submit_transaction([("upsert", {"PartitionKey": "p", "RowKey": str(n)}) for n in range(3)])
            assert table.get_entity("p", "1")["RowKey"] == "1"
            assert len(list(table.query_entities("PartitionKey eq 'p'"))) == 3
            table.delete_entity("p", "2")
        transactions = meter.transactions()
        assert meter.summary() == {
            "- table": 1,
            "metered batch": 1,
            "metered read": 1,
            "metered query": 1,
            "metered delete": 1,
        }
    assert [t.operations for t in transactions if t.kind == "batch"] == [3]
    assert meters_of(azurite) == []


def positive(value: object) -> bool:
    return isinstance(value, int | float) and value > 0


def processes_under(path: Path) -> list[str]:
    """Processes whose command line names ``path`` (the host is started with its settings file there)."""
    return [command for _, command in processes() if str(path) in command]


def meters_of(azurite: AzuriteEndpoints) -> list[str]:
    return [
        command
        for _, command in processes()
        if "bench.table_meter" in command and f":{azurite.table_port}/" in command
    ]


def processes() -> list[tuple[str, str]]:
    """(pid, command line) of every process visible in /proc."""
    found = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            found.append((path.parent.name, path.read_bytes().decode("utf-8", "replace")))
        except OSError:  # it exited meanwhile
            continue
    return found
