"""Elastic fleet (docs/elastic-fleet.md): where instances are found (discovery sources), how
the fleet view follows them (reconciler), how many replicas each model and role should have
(autoscaler, a pure decision), and who carries the decision out (actuators)."""
