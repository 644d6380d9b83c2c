"""The GitHub Actions runner protocol (docs/github.md): client, registration, auth, messages."""
