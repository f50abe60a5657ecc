"""Platform adapters: translate console, Telegram and Discord traffic to and from core events."""
