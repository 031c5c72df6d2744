"""The programs on top of the library: evaluation, chat, caption scores, the MME/MMBench/SEED
runners, the tool agent and its scores, ablations and demos. Nothing in the library imports them
(docs/architecture.md)."""
