"""The supervisor's web page (``smackctl ui``): its routes (``pages.py``), its logins
(``sessions.py``), its part of the door (``door.py``), and the WebSocket that carries its live
updates and the playground's answers (``live.py``, ``chat.py``). The page itself is
``static/``: HTML, CSS and ES modules, no build step. docs/ui.md describes the protocol."""
