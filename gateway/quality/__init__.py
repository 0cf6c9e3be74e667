"""Data and model quality at the gateway: features, profiles, drift, shadows, contracts.

Pure parts (`features`, `sketch`, `drift`, `compare`, `config`, `rules`) take bytes and
numbers in and give numbers out; `tap` is the only piece on the request path (a random
draw and an append); `monitor` and `shadow` are the background loop that does the rest.
"""
