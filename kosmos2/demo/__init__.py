"""The demo layer, free of any UI: what the app, the CLI and the API share.

One idea a module: :mod:`.inputs` (parsing and checking the user's inputs), :mod:`.settings` (the
generation settings, each defined once), :mod:`.tasks` (the task table and its prompts),
:mod:`.loading` (the model, loaded once), :mod:`.results` (the streaming runner and its results),
:mod:`.draw` (annotated images) and :mod:`.view` (the linked HTML view).
"""
