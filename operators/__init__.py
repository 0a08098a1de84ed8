"""SAGE operators and the shared coordinator service (installed as sage_cp_plugin.operators)."""
