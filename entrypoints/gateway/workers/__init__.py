"""`sage-cp serve --workers N`: one scheduling process and N forwarding workers on one host
that behave as one control plane (docs/scale-out.md).

Modules: `wire` (framed messages over the local socket), `forwarding` (the scheduling
process's executor that runs each attempt in the worker owning the request), `scheduler`
(the scheduling process), `link` (a worker's connection to it), `worker_app` (a worker's
ASGI app: generation requests forwarded, everything else proxied), `worker` (a worker
process), `supervisor` (the parent: one listening socket, connections handed out, children
restarted or the server stopped), `child` (`python -m` entry of the child processes).
"""
