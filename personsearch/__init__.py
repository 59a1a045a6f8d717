"""The application shell: the personsearch CLI (and later the HTTP API) composing the packages."""
