"""The Forgejo/Gitea Actions runner protocol (forgejo-runner-protocol.md; docs/forgejo.md).

* ``messages``: the runner.v1 messages and their Connect JSON codec;
* ``client``: the six RPCs over HTTP, with typed errors and backoff;
* ``translate``: a fetched Task -> a JobRequest (or a ``Rejected`` reason);
* ``reporter``: a job's JobEvents -> UpdateLog / UpdateTask requests, driven by the caller;
* ``backend``: the adapter that lets the poller core (solstice.forges.core) drive the above.
"""
