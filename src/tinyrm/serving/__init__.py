"""The HTTP scoring service: FastAPI app (``app``) with micro-batching (``batching``), request schemas
(``schemas``), the auth / body-size guard (``guard``), and its Python client (``client``)."""
