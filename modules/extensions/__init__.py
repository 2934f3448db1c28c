"""Extensions: discovery and isolated loading of extensions/ folders, the registry they register through, and the
host the app calls (hooks around jobs, scripts, tabs, routes, settings). Extensions import only `api`."""
