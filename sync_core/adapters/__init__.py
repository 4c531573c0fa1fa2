"""I/O at the edges: Table Storage, queues, Graph, Entra ID, the CRM. Outside errors are translated here."""
