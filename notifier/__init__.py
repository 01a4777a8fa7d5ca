"""The notifier: delivers task events to webhooks (Standard Webhooks), every attempt an
event in the webhook topic. Depends on ``events`` only."""
