"""salon's platform-neutral core: prompts, policy, store, backends and the orchestrator."""
