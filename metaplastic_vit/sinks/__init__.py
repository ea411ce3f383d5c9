"""Result sinks: plugins that receive the record after every epoch (local files, the console, W&B)."""
