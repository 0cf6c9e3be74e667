"""The adversarial suite at the HTTP edge: raw-socket framing and smuggling cases, target
normalisation, header and body edge cases, generated request bytes, and a differential test
of the upstream HTTP/1.1 client against llhttp. See `edge.py` for the harness."""
