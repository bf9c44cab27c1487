"""Test helpers shared by the integration tier (processes they start are always reaped)."""
