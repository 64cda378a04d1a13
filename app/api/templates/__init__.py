"""The prompt templates' read-only resource: GET /v1/templates[/{template_id}]."""
