"""The fleet: supervisors on several machines joined through a NATS server (issue 31).
``protocol.py`` the subjects and messages (pure), ``members.py`` who is there and where a
request goes (pure), ``service.py`` the connection and the heartbeat, ``worker.py`` serving
the fleet, ``front.py`` sending to it. docs/fleet.md has the protocol."""
