"""Load-test scenarios: simulated backends, a gateway, open-loop traffic, faults on a
schedule, SLO verdicts per phase, results.json and a PNG report (`tailguard loadtest`)."""
