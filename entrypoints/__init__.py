"""Command line, gateway and batch-job entry points (installed as sage_cp_plugin.entrypoints)."""
