-- wrk: starts desk tickets.
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Authorization"] = "Bearer agent-wang-demo"
wrk.headers["Content-Type"] = "application/json"
