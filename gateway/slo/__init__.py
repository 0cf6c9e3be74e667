"""Service level objectives: error budgets and burn rates (pure), and the rules they imply.

`budget` counts good and bad events in fixed time buckets and answers, for any `now`, the
error ratio and burn rate over each alerting window and the budget left; `enforce` turns
those answers into what the gateway does while a budget burns fast; `rules` writes the
Prometheus recording and alerting rules of the same SLOs. Nothing here does I/O or reads a
clock: the controller (`gateway.control.slo`) passes `now` in and acts on the answers.
"""
