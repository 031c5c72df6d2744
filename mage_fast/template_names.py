"""The conversation template names: the model config and the data both name a template, and
neither imports the other (the templates themselves are :mod:`mage_fast.data.llava_conv`)."""

# "default" is the tokenizer's chat template, else the built-in one; the others are LLaVA's.
TEMPLATE_NAMES = ("default", "vicuna_v1", "plain", "llava_llama_2")
