"""The HTTP gateway (`visionq gateway`, the [gateway] extra): tenants with API keys submit and follow
jobs over HTTP, and never see Redis. `create_app` is in `producer.gateway.app`; the key store
(`producer.gateway.keys`) is importable without FastAPI, for `visionq keys`."""
