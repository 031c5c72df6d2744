"""The tool-call row format (rows, calls, checks), its conversions to and from chat markup,
OpenAI and Hermes messages, and the tools' config. Below data: it knows no model and no tools' code."""
