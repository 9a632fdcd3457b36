"""What every script shares: settings, the HTTP client, the output contract and errors, the
command line, local state, background jobs and the platform's clock. Imports nothing above it."""
