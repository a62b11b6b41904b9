"""The daemon's HTTP surface: a Falcon app (`app.create_app`) served by waitress
(`server.serve`). Named after the design's `http/` folder; it lives inside the package so it
never shadows the standard library's `http`."""
