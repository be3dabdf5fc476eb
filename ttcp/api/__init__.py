"""The HTTP API's parts (ttcp.server is its face): the Host and token guards, the
names it answers to, the Prometheus text and the /events fan-out."""
