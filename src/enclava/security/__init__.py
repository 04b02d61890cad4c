"""Security hardening: threat detection, security headers, CORS, body limits, CSRF, secrets at
rest and their key rotation. docs/security.md describes each layer for operators."""
