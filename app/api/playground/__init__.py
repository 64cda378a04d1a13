"""The browser chat playground: a static page that talks to the server's own API."""
